#!/usr/bin/env bash
# The unit suite on Python 3.13 (Debian 13's Python), beside CI's 3.11 run.
#   bash .ci/python313.sh [pytest args]     build CPython 3.13 once (cached), make .venv313, run the unit suite
#   bash .ci/python313.sh --build-only      only the interpreter; prints its path
# CPython comes from Debian 13's source archive (deb.debian.org), pinned by sha256: uv and python.org's builds
# live on GitHub, which CI machines may not reach. Built without PGO/LTO to keep the first build to a few minutes;
# later runs reuse the prefix. Environment: DENEN_PY313_PREFIX (install prefix), DENEN_PY313_TARBALL (a local copy
# of the tarball, still checked against the pin).
set -euo pipefail
cd "$(dirname "$0")/.."

version=3.13.5
url="http://deb.debian.org/debian/pool/main/p/python3.13/python3.13_${version}.orig.tar.xz"
# From Debian 13 (trixie) main/source/Sources, package python3.13 3.13.5-2: Checksums-Sha256 of the orig tarball.
sha256=93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640
cache="${XDG_CACHE_HOME:-$HOME/.cache}/denen"
prefix="${DENEN_PY313_PREFIX:-$cache/python$version}"
python="$prefix/bin/python3.13"
stamp="$prefix/.denen-built-$sha256"
# The standard-library modules the agent, the bridge and the tests use that need a system library to build.
needed_modules="ssl sqlite3 ctypes lzma bz2 zlib uuid venv ensurepip"

. .ci/apt.sh  # as_root, apt_install

build_python() {
  # Headers for the modules above (CPython silently skips a module whose library is missing; the import check
  # below catches that).
  local apt_missing=() p
  for p in build-essential pkg-config xz-utils curl libssl-dev libsqlite3-dev libffi-dev zlib1g-dev libbz2-dev \
           liblzma-dev uuid-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || apt_missing+=("$p")
  done
  if [ ${#apt_missing[@]} -gt 0 ]; then
    apt_install " to build Python $version" "${apt_missing[@]}" || exit 1
  fi

  local tarball
  work="$(mktemp -d "${TMPDIR:-/tmp}/denen-py313.XXXXXX")"  # global: the EXIT trap runs after this function
  trap 'rm -rf "$work"' EXIT
  tarball="${DENEN_PY313_TARBALL:-$cache/python3.13_${version}.orig.tar.xz}"
  if [ ! -f "$tarball" ]; then
    mkdir -p "$cache"
    echo "downloading $url..." >&2
    curl -fsSL --retry 3 -o "$work/src.tar.xz" "$url"
    mv "$work/src.tar.xz" "$tarball"
  fi
  if ! echo "$sha256  $tarball" | sha256sum -c --quiet - >/dev/null 2>&1; then
    echo "$tarball does not match the pinned sha256 $sha256; delete it to download again" >&2
    exit 1
  fi
  tar -xJf "$tarball" -C "$work"

  echo "building Python $version into $prefix (a few minutes, once)..." >&2
  local start=$SECONDS
  rm -rf "$prefix"
  (
    cd "$work/Python-$version"
    # No PGO/LTO: 3-4 times the build time for a faster interpreter the unit suite does not need.
    # --disable-test-modules: CPython's own test suite is not installed (half the install time).
    ./configure -q --prefix="$prefix" --disable-test-modules --with-ensurepip=install >"$work/configure.log" 2>&1 \
      || { tail -30 "$work/configure.log" >&2; exit 1; }
    make -s -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -40 "$work/make.log" >&2; exit 1; }
    make -s install >"$work/install.log" 2>&1 || { tail -40 "$work/install.log" >&2; exit 1; }
  )
  local m
  for m in $needed_modules; do
    "$python" -c "import $m" 2>/dev/null || { echo "Python $version was built without the $m module" >&2; exit 1; }
  done
  touch "$stamp"
  echo "built Python $version in $((SECONDS - start)) s" >&2
}

[ -f "$stamp" ] && [ -x "$python" ] || build_python

if [ "${1:-}" = --build-only ]; then
  echo "$python"
  exit 0
fi

venv=.venv313
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))'; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
installed="$venv/.denen-installed"
if [ ! -f "$installed" ] || [ pyproject.toml -nt "$installed" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e '.[test]'
  touch "$installed"
fi

# The unit suite, the bridge's pure parts (line protocol, routing policy, config), which start no server, and the
# wheel installed into a fresh 3.13 venv outside the checkout, running every verb (the demo, with its Mosquitto).
if [ $# -eq 0 ]; then
  set -- -q tests/unit tests/bridge/test_lineproto.py tests/bridge/test_policy.py tests/bridge/test_bridge_config.py \
    tests/package
fi
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
