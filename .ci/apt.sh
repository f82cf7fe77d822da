# Shell helpers sourced by deploy/dev.sh and .ci/python313.sh: installing the Debian packages a step is missing.

# as_root CMD...: run CMD as root (directly when root, else through sudo); fails when neither is possible.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

# apt_install WHY PKG...: install PKG... with apt, saying why (" to build Python 3.13", or empty); returns 1 with
# a message when they cannot be installed. --no-install-recommends: recommends would bring a desktop's worth of
# fonts, manual page tools and helpers.
apt_install() {
  local why="$1"
  shift
  echo "installing $* (apt)$why..." >&2
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
           --no-install-recommends "$@" >/dev/null; }; then
    echo "could not install $*: run as root or install them yourself" >&2
    return 1
  fi
}
