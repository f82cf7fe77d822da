#!/bin/sh
# make-credentials.sh - the secrets of the denen backend (deploy/backend/docker-compose.yml).
#
#   sh make-credentials.sh -n mqtt.example.jp gw-okutama-01 gw-tanba-traps-01
#
# Creates, next to this script (or under -d DIR), and never overwrites what already exists:
#   .env                                 from .env.example, every "change-me" replaced by a random secret
#   secrets/ca/ca.key, ca.crt            the MQTT certificate authority (EC P-256, 20 years)
#   secrets/mosquitto/server.key, .crt   the broker's certificate, for the names given with -n plus
#                                        "mosquitto" and "localhost" (10 years)
#   secrets/mosquitto/ca.crt, passwd     the CA and the broker's password file (hashed; mosquitto_passwd -U)
#   secrets/bridge/mqtt-password, ca.pem the bridge's MQTT login (user denen-bridge)
#   secrets/gateways/<id>/mqtt-password, ca.pem   one login per gateway: user name = gateway id
# and prints, for every gateway named, the lines its config needs. Run it again to add gateways; -R rotates the
# passwords of the gateways named. Restart the broker afterwards: docker compose restart mosquitto
#
# Needs: POSIX sh, openssl (1.1.1 or later), mosquitto_passwd (Debian/Ubuntu: apt-get install mosquitto).
# Passwords never appear on a command line (mosquitto_passwd hashes a temporary file in place).
set -eu

usage() {
  cat >&2 <<'EOF'
usage: make-credentials.sh [-d DIR] [-n BROKER_NAME]... [-p PORT] [-R] [GATEWAY_ID...]
  -d DIR          deployment directory holding .env.example (default: the directory of this script)
  -n BROKER_NAME  DNS name or IP address the gateways use to reach the broker; repeat for several.
                  Needed the first time (when the broker certificate is made); later runs keep the certificate.
  -p PORT         broker port printed in the gateway config lines (default 8883)
  -R              rotate: new passwords for the gateways named (the old ones stop working after the broker
                  restarts)
  GATEWAY_ID      gateway ids (gateway.id in each gateway's config): a-z, 0-9, '_' and '-', first a letter or digit,
                  at most 63 characters
EOF
  exit 64
}

die() { printf 'make-credentials.sh: %s\n' "$*" >&2; exit 1; }
note() { printf '%s\n' "$*" >&2; }

DIR=$(cd "$(dirname "$0")" && pwd)
NAMES=""
PORT=8883
ROTATE=0
while getopts d:n:p:Rh opt; do
  case $opt in
    d) DIR=$OPTARG ;;
    n) NAMES="$NAMES $OPTARG" ;;
    p) PORT=$OPTARG ;;
    R) ROTATE=1 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))

command -v openssl >/dev/null 2>&1 || die "openssl is not installed (Debian/Ubuntu: apt-get install openssl)"
command -v mosquitto_passwd >/dev/null 2>&1 \
  || die "mosquitto_passwd is not installed (Debian/Ubuntu: apt-get install mosquitto; it comes with the broker)"
[ -d "$DIR" ] || die "no such directory: $DIR"
case $PORT in ''|*[!0-9]*) die "-p needs a port number, got '$PORT'" ;; esac

# Everything below is secret: files are created owner-only unless said otherwise.
umask 077
SECRETS="$DIR/secrets"
CA_DIR="$SECRETS/ca"
BROKER_DIR="$SECRETS/mosquitto"
BRIDGE_DIR="$SECRETS/bridge"
GW_DIR="$SECRETS/gateways"
PASSWD="$BROKER_DIR/passwd"
BRIDGE_USER=denen-bridge
TMP="$SECRETS/.tmp.$$"
mkdir -p "$CA_DIR" "$BROKER_DIR" "$BRIDGE_DIR" "$GW_DIR"
chmod 700 "$SECRETS"
trap 'rm -f "$TMP" "$TMP".*' EXIT INT TERM

random_secret() { openssl rand -hex 24; }

valid_id() {
  printf '%s\n' "$1" | grep -Eq '^[a-z0-9][a-z0-9_-]{0,62}$'
}

# ---- .env ---------------------------------------------------------------------------------------------------
if [ ! -f "$DIR/.env" ]; then
  [ -f "$DIR/.env.example" ] || die "$DIR/.env.example is missing"
  : > "$TMP.env"
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      *=change-me) printf '%s=%s\n' "${line%%=*}" "$(random_secret)" >> "$TMP.env" ;;
      *) printf '%s\n' "$line" >> "$TMP.env" ;;
    esac
  done < "$DIR/.env.example"
  mv "$TMP.env" "$DIR/.env"
  note "wrote $DIR/.env with new random secrets (review GRAFANA_ROOT_URL, the mail settings and DENEN_ALERT_EMAIL)"
fi

# ---- CA -----------------------------------------------------------------------------------------------------
if [ ! -f "$CA_DIR/ca.key" ] || [ ! -f "$CA_DIR/ca.crt" ]; then
  cat > "$TMP.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
O = denen
CN = denen MQTT CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CA_DIR/ca.key" 2>/dev/null
  openssl req -new -x509 -config "$TMP.cnf" -extensions v3_ca -key "$CA_DIR/ca.key" -sha256 -days 7300 \
    -set_serial "0x$(openssl rand -hex 16)" -out "$CA_DIR/ca.crt"
  note "made the MQTT CA: $CA_DIR/ca.crt (keep ca.key offline if you can; it signs the broker certificate)"
fi
cp "$CA_DIR/ca.crt" "$BROKER_DIR/ca.crt"

# ---- broker certificate ---------------------------------------------------------------------------------------
if [ ! -f "$BROKER_DIR/server.key" ] || [ ! -f "$BROKER_DIR/server.crt" ]; then
  [ -n "$NAMES" ] \
    || die "give the broker's DNS name or IP address with -n (what the gateways connect to), e.g. -n mqtt.example.jp"
  first=""
  dns=1
  ip=1
  {
    printf '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nO = denen\n'
    for n in $NAMES; do first=${first:-$n}; done
    printf 'CN = %s\n' "$first"
    printf '[v3_server]\nbasicConstraints = critical, CA:FALSE\n'
    printf 'keyUsage = critical, digitalSignature, keyEncipherment\n'
    printf 'extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n'
    printf 'subjectAltName = @alt\n[alt]\n'
    # "mosquitto" is the broker's name inside the compose network (the bridge connects to it by that name).
    for n in $NAMES mosquitto localhost; do
      case $n in
        *:*) printf 'IP.%s = %s\n' "$ip" "$n"; ip=$((ip + 1)) ;;              # IPv6 address
        *[!0-9.]*) printf 'DNS.%s = %s\n' "$dns" "$n"; dns=$((dns + 1)) ;;   # a name
        *) printf 'IP.%s = %s\n' "$ip" "$n"; ip=$((ip + 1)) ;;                # IPv4 address
      esac
    done
  } > "$TMP.srv.cnf"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$BROKER_DIR/server.key" 2>/dev/null
  openssl req -new -config "$TMP.srv.cnf" -key "$BROKER_DIR/server.key" -out "$TMP.csr"
  openssl x509 -req -in "$TMP.csr" -CA "$CA_DIR/ca.crt" -CAkey "$CA_DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 3650 \
    -extfile "$TMP.srv.cnf" -extensions v3_server -out "$BROKER_DIR/server.crt" 2>/dev/null
  printf '%s\n' $NAMES > "$BROKER_DIR/server.names"
  note "made the broker certificate for: $(printf '%s ' $NAMES)mosquitto localhost"
elif [ -n "$NAMES" ] && [ "$(printf '%s\n' $NAMES)" != "$(cat "$BROKER_DIR/server.names" 2>/dev/null)" ]; then
  note "kept the existing broker certificate (names: $(tr '\n' ' ' < "$BROKER_DIR/server.names" 2>/dev/null));" \
       "to re-issue it for other names, delete $BROKER_DIR/server.crt and run again"
fi
BROKER_HOST=$(head -n 1 "$BROKER_DIR/server.names" 2>/dev/null || echo localhost)

# ---- MQTT logins ----------------------------------------------------------------------------------------------
# add_login USER PASSWORD_FILE: (re)place USER's hashed entry in the broker's password file.
add_login() {
  printf '%s:%s\n' "$1" "$(cat "$2")" > "$TMP.pw"
  mosquitto_passwd -U "$TMP.pw" >/dev/null || die "mosquitto_passwd could not hash the password of $1"
  if [ -f "$PASSWD" ]; then grep -v "^$1:" "$PASSWD" > "$TMP.passwd" || true; else : > "$TMP.passwd"; fi
  cat "$TMP.pw" >> "$TMP.passwd"
  rm -f "$TMP.pw"
  mv "$TMP.passwd" "$PASSWD"
}

# ensure_login USER PASSWORD_FILE ROTATE: make a password if there is none (or rotating), and the passwd entry.
ensure_login() {
  if [ ! -s "$2" ] || [ "$3" = 1 ]; then
    random_secret > "$2"
    add_login "$1" "$2"
  elif ! grep -q "^$1:" "$PASSWD" 2>/dev/null; then
    add_login "$1" "$2"
  fi
}

ensure_login "$BRIDGE_USER" "$BRIDGE_DIR/mqtt-password" 0
cp "$CA_DIR/ca.crt" "$BRIDGE_DIR/ca.pem"

for gw in "$@"; do
  valid_id "$gw" \
    || die "'$gw' is not a valid gateway id (a-z, 0-9, '_', '-'; starts with a letter or digit; at most 63)"
  [ "$gw" != "$BRIDGE_USER" ] || die "'$BRIDGE_USER' is the bridge's user name, not a gateway id"
  mkdir -p "$GW_DIR/$gw"
  ensure_login "$gw" "$GW_DIR/$gw/mqtt-password" "$ROTATE"
  cp "$CA_DIR/ca.crt" "$GW_DIR/$gw/ca.pem"
  cat <<EOF
# ---- gateway $gw ----
# Copy to the gateway (owner: the agent's user, mode 600):
#   $GW_DIR/$gw/mqtt-password  ->  /etc/denen/mqtt-password
#   $GW_DIR/$gw/ca.pem         ->  /etc/denen/ca.pem
# and put this in its config (gateway.id must be $gw):
mqtt:
  host: $BROKER_HOST
  port: $PORT
  username: $gw
  password_file: /etc/denen/mqtt-password
  tls:
    ca_file: /etc/denen/ca.pem
  topic_prefix: denen/v1

EOF
done
chmod 600 "$PASSWD"
note "done. Load new logins into the broker with: docker compose restart mosquitto"
