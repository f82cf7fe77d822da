#!/usr/bin/env bash
# Install the denen edge agent on Raspberry Pi OS (Bookworm; any Debian 12+ works the same way).
#
#   sudo bash deploy/edge/install.sh               install or update (safe to run again)
#   bash deploy/edge/install.sh --dry-run          print every step, change nothing
#
# What it does, each step skipped when already done:
#   1. apt: python3, python3-venv, python3-pip, and python3-lgpio (GPIO on the Pi 5 and newer kernels)
#   2. groups dialout and gpio; the service user `denen` (system user, no login, home /var/lib/denen)
#   3. a virtualenv in /opt/denen/venv (with the system site packages, for apt's python3-lgpio), and the agent
#      pip-installed into it from this source tree (or --source PATH: a source tree, wheel or sdist);
#      /usr/local/bin/denen -> /opt/denen/venv/bin/denen
#   4. files: /etc/systemd/system/denen.service, /etc/udev/rules.d/99-denen-lora.rules,
#      /etc/systemd/journald.conf.d/denen.conf (journald size cap), /etc/denen/ (config folder),
#      /opt/denen/share/ (this README and the example configs)
#   5. reload udev and systemd, enable the service, and (re)start it when a config exists
#      (a flashed bundle on the boot partition, or /etc/denen/config.yaml)
#   6. the user who ran sudo (or --operator USER) joins groups denen, dialout and gpio, so that
#      `denen doctor` and `denen monitor` work without sudo after the next login. The journal itself is the
#      service's alone (mode 0600): read it, and reset a node's counter, as the service's user:
#      sudo -u denen denen status / sudo -u denen denen node reset-counter NODE
#
# Options:
#   --dry-run          print the commands instead of running them (needs no root)
#   --root DIR         install the files under DIR instead of / (with --files-only or --dry-run; for image builds)
#   --files-only       only step 4 (no apt, users, venv or systemctl): for building SD-card images
#   --source PATH      what to pip-install (default: the source tree this script is in)
#   --operator USER    add USER to the denen, dialout and gpio groups (default: $SUDO_USER); --no-operator: nobody
#   --no-start         enable the service but do not start it
#   --timezone ZONE    the gateway's time zone, for times shown to people (default Asia/Tokyo; 'keep' leaves it);
#                      machine output (--json, MQTT, InfluxDB) is UTC whatever the zone
#
# Exit codes: 0 done; 1 a step failed (the failing command is shown); 64 bad usage.
set -euo pipefail

PREFIX=/opt/denen
VENV="$PREFIX/venv"
SERVICE_USER=denen

DRY_RUN=0
ROOT=""
FILES_ONLY=0
SOURCE=""
OPERATOR="${SUDO_USER:-}"
START=1
TIMEZONE=Asia/Tokyo

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --root) [ $# -ge 2 ] || { echo "install.sh: --root needs a folder" >&2; exit 64; }; ROOT="$2"; shift ;;
    --root=*) ROOT="${1#--root=}" ;;
    --files-only) FILES_ONLY=1 ;;
    --source) [ $# -ge 2 ] || { echo "install.sh: --source needs a path" >&2; exit 64; }; SOURCE="$2"; shift ;;
    --source=*) SOURCE="${1#--source=}" ;;
    --operator) [ $# -ge 2 ] || { echo "install.sh: --operator needs a user" >&2; exit 64; }; OPERATOR="$2"; shift ;;
    --operator=*) OPERATOR="${1#--operator=}" ;;
    --no-operator) OPERATOR="" ;;
    --no-start) START=0 ;;
    --timezone) [ $# -ge 2 ] || { echo "install.sh: --timezone needs a zone, e.g. Asia/Tokyo" >&2; exit 64; }; TIMEZONE="$2"; shift ;;
    --timezone=*) TIMEZONE="${1#--timezone=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 64 ;;
  esac
  shift
done

if [ "$TIMEZONE" != keep ] && { case "$TIMEZONE" in *..*|/*|"") true ;; *) false ;; esac \
     || [ ! -f "/usr/share/zoneinfo/$TIMEZONE" ]; }; then
  echo "install.sh: unknown time zone '$TIMEZONE' (a name under /usr/share/zoneinfo, e.g. Asia/Tokyo; or keep)" >&2
  exit 64
fi

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC_TREE="$(cd "$HERE/../.." && pwd)"
SOURCE="${SOURCE:-$SRC_TREE}"

if [ -n "$ROOT" ]; then
  if [ "$FILES_ONLY" = 0 ] && [ "$DRY_RUN" = 0 ]; then
    echo "install.sh: --root installs files only; add --files-only (or --dry-run to see the steps)" >&2
    exit 64
  fi
  case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
  ROOT="${ROOT%/}"
fi
if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo bash $0), or with --dry-run to see what it would do" >&2
  exit 1
fi

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# Run a command, or in --dry-run print it (quoted so it can be pasted into a shell).
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@" || { echo "install.sh: failed: $*" >&2; exit 1; }
  fi
}

# Install one file under $ROOT with a mode, creating its folder; unchanged files are left alone.
put() {  # put MODE SOURCE DEST
  local mode="$1" src="$2" dest="$ROOT$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    note "$3 is up to date"
    return 0
  fi
  run install -D -m "$mode" "$src" "$dest"
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# --- 0. the system ----------------------------------------------------------------------------------------
if [ "$FILES_ONLY" = 0 ]; then
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    case "${ID:-}:${ID_LIKE:-}" in
      raspbian:*|debian:*|*:*debian*) say "system: ${PRETTY_NAME:-$ID}" ;;
      *) say "system: ${PRETTY_NAME:-unknown}: not Debian-based; continuing, but apt steps may fail" ;;
    esac
  fi
  # Times shown to the installer and staff (doctor, status, monitor) are in the system's zone.
  if [ "$TIMEZONE" != keep ]; then
    current="$(readlink /etc/localtime 2>/dev/null | sed 's#.*/zoneinfo/##')"
    if [ "$current" = "$TIMEZONE" ]; then
      note "time zone $TIMEZONE already set"
    else
      say "time zone: ${current:-unset} -> $TIMEZONE"
      run timedatectl set-timezone "$TIMEZONE"
    fi
  fi
fi

# --- 1. packages ------------------------------------------------------------------------------------------
if [ "$FILES_ONLY" = 0 ]; then
  say "packages"
  wanted=(python3 python3-venv python3-pip)
  # python3-lgpio drives GPIO through /dev/gpiochip* (Pi 5, Bookworm kernels); gpiozero finds it via the
  # venv's system site packages. Not every Debian mirror has it; GPIO then needs another pin factory.
  if apt-cache show python3-lgpio >/dev/null 2>&1; then wanted+=(python3-lgpio); fi
  missing=()
  for p in "${wanted[@]}"; do have_pkg "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    note "all installed: ${wanted[*]}"
  fi
  if [ "$DRY_RUN" = 0 ] && ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: denen needs Python >= 3.11 (found $(python3 --version 2>&1)); use Raspberry Pi OS Bookworm or newer" >&2
    exit 1
  fi
fi

# --- 2. groups and the service user -----------------------------------------------------------------------
if [ "$FILES_ONLY" = 0 ]; then
  say "service user $SERVICE_USER"
  for g in dialout gpio; do
    # The unit's SupplementaryGroups= names both; a missing group would stop the service from starting.
    getent group "$g" >/dev/null || run groupadd --system "$g"
  done
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    note "user $SERVICE_USER exists"
  else
    run useradd --system --user-group --home-dir /var/lib/denen --no-create-home --shell /usr/sbin/nologin \
      --comment "denen edge agent" "$SERVICE_USER"
  fi
  # Also set by the unit; having them on the account makes `sudo -u denen denen doctor` show the real picture.
  run usermod -a -G dialout,gpio "$SERVICE_USER"
fi

# --- 3. the virtualenv ------------------------------------------------------------------------------------
if [ "$FILES_ONLY" = 0 ]; then
  say "virtualenv $VENV"
  if [ -x "$VENV/bin/python" ]; then
    note "exists"
  else
    run install -d -m 0755 "$PREFIX"
    run python3 -m venv --system-site-packages "$VENV"
  fi
  run "$VENV/bin/python" -m pip install --quiet --upgrade pip
  run "$VENV/bin/python" -m pip install --quiet --upgrade "$SOURCE"
  run ln -sfn "$VENV/bin/denen" /usr/local/bin/denen
fi

# --- 4. files ---------------------------------------------------------------------------------------------
say "files${ROOT:+ under $ROOT}"
put 0644 "$HERE/denen.service" /etc/systemd/system/denen.service
put 0644 "$HERE/99-denen-lora.rules" /etc/udev/rules.d/99-denen-lora.rules
journald_conf="$(mktemp)"
trap 'rm -f "$journald_conf"' EXIT
cat >"$journald_conf" <<'EOF'
# Installed by denen's deploy/edge/install.sh: keep the system log from competing with the reading journal
# (journal.quota_mb) for the SD card's space.
[Journal]
SystemMaxUse=64M
EOF
put 0644 "$journald_conf" /etc/systemd/journald.conf.d/denen.conf
put 0644 "$HERE/README.md" "$PREFIX/share/README.md"
for example in forest-sos.yaml trap-field.yaml river-station.yaml demo.yaml example-keys.env; do
  [ -f "$SRC_TREE/config/$example" ] || continue
  put 0644 "$SRC_TREE/config/$example" "$PREFIX/share/config-examples/$example"
done
if [ -d "$ROOT/etc/denen" ]; then
  note "/etc/denen exists"
else
  run install -d -m 0750 "$ROOT/etc/denen"
fi
if [ "$FILES_ONLY" = 0 ]; then
  # The config folder is readable by the service's group only: a config may hold inline keys.
  run chown root:"$SERVICE_USER" "$ROOT/etc/denen"
fi

# --- 5. udev and systemd ----------------------------------------------------------------------------------
if [ "$FILES_ONLY" = 0 ]; then
  say "udev and systemd"
  run udevadm control --reload-rules
  run udevadm trigger --subsystem-match=tty --action=add
  run systemctl restart systemd-journald
  run systemctl daemon-reload
  run systemctl enable denen.service
  config_found=""
  for c in /boot/firmware/denen/MANIFEST.json /boot/denen/MANIFEST.json /var/lib/denen/flashed/MANIFEST.json \
           /etc/denen/config.yaml; do
    if [ -f "$c" ]; then config_found="$c"; break; fi
  done
  if [ "$START" = 0 ]; then
    note "not started (--no-start)"
  elif [ -n "$config_found" ]; then
    note "config found: $config_found"
    run systemctl restart denen.service
  else
    note "no config yet: flash one (denen flash CONFIG /media/\$USER/bootfs on your laptop) or write"
    note "/etc/denen/config.yaml, then: sudo systemctl start denen"
  fi
fi

# --- 6. the operator --------------------------------------------------------------------------------------
if [ "$FILES_ONLY" = 0 ] && [ -n "$OPERATOR" ] && [ "$OPERATOR" != root ]; then
  if id -u "$OPERATOR" >/dev/null 2>&1; then
    say "operator $OPERATOR"
    run usermod -a -G "$SERVICE_USER,dialout,gpio" "$OPERATOR"
    note "log out and in again for the groups to apply"
  else
    note "operator $OPERATOR does not exist; skipped"
  fi
fi

say "done. Next: denen doctor   (then: denen monitor; logs: journalctl -u denen -f)"
