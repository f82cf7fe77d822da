#!/bin/sh
# One-shot set-up of InfluxDB 2.x for denen; the compose service "influxdb-setup" runs it after every start of
# the stack (every step is skipped when already done), with the influx CLI of the influxdb image and the admin
# token from .env.
#
#   1. the DBRP mapping database "denen" / retention policy "autogen" -> bucket "denen": Grafana's InfluxQL
#      datasource (and any InfluxQL client) addresses the bucket by that database name;
#   2. a read-only v1 login for Grafana (GRAFANA_INFLUX_USER / GRAFANA_INFLUX_PASSWORD; password kept in sync);
#   3. a token that may only write the bucket, for the bridge, in /run/denen/influx/token (a volume mounted
#      read-only into the bridge container; owned by the bridge's uid 10001, mode 400).
set -eu
: "${INFLUX_HOST:=http://influxdb:8086}"
: "${INFLUX_TOKEN:?INFLUX_TOKEN (the admin token) is not set}"
export INFLUX_HOST INFLUX_TOKEN
ORG=denen
BUCKET=denen
TOKEN_FILE=/run/denen/influx/token

bucket_id=$(influx bucket list --org "$ORG" --name "$BUCKET" --hide-headers | awk 'NR == 1 {print $1}')
[ -n "$bucket_id" ] || { echo "influxdb-setup: bucket $BUCKET not found in org $ORG" >&2; exit 1; }

if influx v1 dbrp list --org "$ORG" --db "$BUCKET" --hide-headers 2>/dev/null | grep -q .; then
  echo "influxdb-setup: DBRP mapping $BUCKET/autogen exists"
else
  influx v1 dbrp create --org "$ORG" --db "$BUCKET" --rp autogen --bucket-id "$bucket_id" --default
fi

# set-password fails when the login does not exist yet: then create it.
if influx v1 auth set-password --org "$ORG" --username "$GRAFANA_INFLUX_USER" --password "$GRAFANA_INFLUX_PASSWORD" \
    >/dev/null 2>&1; then
  echo "influxdb-setup: v1 login $GRAFANA_INFLUX_USER exists (password synchronised with .env)"
else
  influx v1 auth create --org "$ORG" --username "$GRAFANA_INFLUX_USER" --password "$GRAFANA_INFLUX_PASSWORD" \
    --read-bucket "$bucket_id" --description "grafana (read-only, InfluxQL)" >/dev/null
  echo "influxdb-setup: created the read-only v1 login $GRAFANA_INFLUX_USER"
fi

if [ -s "$TOKEN_FILE" ]; then
  echo "influxdb-setup: bridge token exists"
else
  umask 077
  token=$(influx auth create --org "$ORG" --write-bucket "$bucket_id" --description denen-bridge --json \
    | sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p' | head -n 1)
  [ -n "$token" ] || { echo "influxdb-setup: could not create the bridge token" >&2; exit 1; }
  printf '%s\n' "$token" > "$TOKEN_FILE.tmp"
  chown 10001:10001 "$TOKEN_FILE.tmp"
  chmod 400 "$TOKEN_FILE.tmp"
  mv "$TOKEN_FILE.tmp" "$TOKEN_FILE"
  echo "influxdb-setup: created the bridge's write-only token"
fi
