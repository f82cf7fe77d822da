#!/usr/bin/env bash
# Developer entry point, the README's two set-up commands:
#   bash deploy/dev.sh demo [--duration S]   simulated field -> agent -> MQTT broker -> live view
#   bash deploy/dev.sh test [pytest args]    the test suite
# It installs what is missing (apt: mosquitto, python3-venv when run as root or with sudo; pip: the project into
# .venv), so it works on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd="${1:-}"
case "$cmd" in
  demo|test) shift ;;
  *) echo "usage: bash deploy/dev.sh demo|test [args...]" >&2; exit 64 ;;
esac

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "denen needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

. .ci/apt.sh  # as_root, apt_install

apt_missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || apt_missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || apt_missing+=(mosquitto-clients)
if [ "$cmd" = test ]; then
  # The backend tests run a real InfluxDB 1.x (v1 API, InfluxQL), VictoriaMetrics (v2 write API) and check the
  # compose file with docker-compose (which validates without a Docker engine).
  command -v influxd >/dev/null || apt_missing+=(influxdb)
  command -v victoria-metrics >/dev/null || apt_missing+=(victoria-metrics)
  command -v docker-compose >/dev/null || apt_missing+=(docker-compose)
  # Several bridge instances share one de-duplication store (a frame heard by several gateways): a real Redis.
  command -v redis-server >/dev/null || apt_missing+=(redis-server)
  # The bridge's systemd unit is checked with systemd's own parser (systemd-analyze verify).
  command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
fi
"$PY" -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
if [ ${#apt_missing[@]} -gt 0 ] && ! apt_install "" "${apt_missing[@]}"; then
  [ "$cmd" = test ] && exit 1
fi
if [ "$cmd" = test ]; then
  # The console's acknowledgement page is tested in a real headless browser (selenium drives chromium-driver).
  browser_missing=()
  command -v chromium >/dev/null || browser_missing+=(chromium)
  command -v chromedriver >/dev/null || browser_missing+=(chromium-driver)
  if [ ${#browser_missing[@]} -gt 0 ]; then
    apt_install "" "${browser_missing[@]}" || exit 1
  fi
fi
# Debian starts the packaged broker on port 1883; the tests and the demo start their own on free ports.

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.denen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

case "$cmd" in
  demo) exec .venv/bin/denen demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
esac
