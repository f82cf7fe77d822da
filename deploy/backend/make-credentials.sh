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
#   secrets/mosquitto/ca.crt, passwd     the CA and every MQTT login, hashed (mosquitto_passwd -U)
#   secrets/bridge-<n>/mqtt-password, ca.pem      one login per bridge process: user denen-bridge-<n> (-b)
#   secrets/console/mqtt-password, ca.pem         the console's login (acknowledgement page): user denen-console
#   secrets/console/link-secret                   the key that signs the acknowledgement links (made once)
#   secrets/console-cli/mqtt-password, ca.pem     the operators' login for denen ack, with the console's rights:
#                                                 user denen-console-cli (a login is its client id, so the command
#                                                 line cannot share the running console's)
#   secrets/consumer-<n>/mqtt-password, ca.pem    one login per consumer (Node-RED, a town's own dashboard): user
#                                                 denen-consumer-<n> (-c), which may only read each node's retained
#                                                 state (a login is its client id: two consumers sharing one would
#                                                 take each other's session over)
#   secrets/gateways/<id>/mqtt-password, ca.pem   one login per gateway: user name = gateway id
#   secrets/emqx/users.csv, ca.crt, server.crt, server.key   the same logins and certificate for the EMQX nodes
#                                        of the clustered path (cluster/docker-compose.yml), written on every run
# and writes, on every run, secrets/gateways/<id>/mqtt.yaml for every gateway named: the mqtt: section of its
# config, with paths relative to that folder, so the folder is what the installer needs as it is (config.yaml goes
# beside the files; deploy/edge/README.md), and secrets/mosquitto/dynamic-security.json: the broker's logins and
# ACLs (Mosquitto's dynamic-security plugin), made from the passwd file and the rules in mosquitto/acl. It prints
# each gateway's mqtt.yaml (no password: that stays in its file). Run it again to add gateways or bridges; -R
# rotates the passwords of the gateways named, -X revokes them. Restart the broker afterwards:
# docker compose restart mosquitto
#
# Needs: POSIX sh, openssl (1.1.1 or later), mosquitto_passwd (Debian/Ubuntu: apt-get install mosquitto).
# Passwords never appear on a command line (mosquitto_passwd hashes a temporary file in place).
set -eu

usage() {
  cat >&2 <<'EOF'
usage: make-credentials.sh [-d DIR] [-n BROKER_NAME]... [-p PORT] [-b BRIDGES] [-c CONSUMERS] [-R | -X]
                           [GATEWAY_ID...]
  -d DIR          deployment directory holding .env.example (default: the directory of this script)
  -n BROKER_NAME  DNS name or IP address the gateways use to reach the broker; repeat for several.
                  Needed the first time (when the broker certificate is made); later runs keep the certificate.
  -p PORT         broker port printed in the gateway config lines (default 8883)
  -b BRIDGES      number of bridge processes, each with its own login denen-bridge-1 .. denen-bridge-BRIDGES
                  (default 1; existing bridge logins are kept)
  -c CONSUMERS    number of consumers (Node-RED, a town's dashboard), each with its own login denen-consumer-1 ..
                  denen-consumer-CONSUMERS, read-only on each node's state (default 1; existing ones are kept)
  -R              rotate: new passwords for the gateways named (the old ones stop working after the broker
                  restarts)
  -X              revoke: remove the logins of the gateways named (a stolen or retired gateway; locked out once
                  the broker restarts)
  GATEWAY_ID      gateway ids (gateway.id in each gateway's config): a-z, 0-9, '_' and '-', first a letter or digit,
                  at most 63 characters; names starting with "denen-" are reserved for backend services
EOF
  exit 64
}

die() { printf 'make-credentials.sh: %s\n' "$*" >&2; exit 1; }
note() { printf '%s\n' "$*" >&2; }

DIR=$(cd "$(dirname "$0")" && pwd)
NAMES=""
PORT=8883
ROTATE=0
REVOKE=0
BRIDGES=""
CONSUMERS=""
while getopts d:n:p:b:c:RXh opt; do
  case $opt in
    d) DIR=$OPTARG ;;
    n) NAMES="$NAMES $OPTARG" ;;
    p) PORT=$OPTARG ;;
    b) BRIDGES=$OPTARG ;;
    c) CONSUMERS=$OPTARG ;;
    R) ROTATE=1 ;;
    X) REVOKE=1 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))

command -v openssl >/dev/null 2>&1 || die "openssl is not installed (Debian/Ubuntu: apt-get install openssl)"
command -v mosquitto_passwd >/dev/null 2>&1 \
  || die "mosquitto_passwd is not installed (Debian/Ubuntu: apt-get install mosquitto; it comes with the broker)"
[ -d "$DIR" ] || die "no such directory: $DIR"
case $PORT in ''|*[!0-9]*) die "-p needs a port number, got '$PORT'" ;; esac
case $BRIDGES in ''|[1-9]|[1-9][0-9]) ;; *) die "-b needs a number of bridges from 1 to 99, got '$BRIDGES'" ;; esac
case $CONSUMERS in ''|[1-9]|[1-9][0-9]) ;; *) die "-c needs a number of consumers from 1 to 99, got '$CONSUMERS'" ;; esac
[ "$ROTATE$REVOKE" != 11 ] || die "-R (rotate) and -X (revoke) exclude each other"
[ "$REVOKE" = 0 ] || [ $# -gt 0 ] || die "-X needs the ids of the gateways to revoke"
ACL="$DIR/mosquitto/acl"
[ -f "$ACL" ] || die "$ACL is missing (the broker's access rules)"

# Everything below is secret: files are created owner-only unless said otherwise.
umask 077
SECRETS="$DIR/secrets"
CA_DIR="$SECRETS/ca"
BROKER_DIR="$SECRETS/mosquitto"
GW_DIR="$SECRETS/gateways"
PASSWD="$BROKER_DIR/passwd"
DYNSEC="$BROKER_DIR/dynamic-security.json"
TMP="$SECRETS/.tmp.$$"
mkdir -p "$CA_DIR" "$BROKER_DIR" "$GW_DIR"
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
else
  # An .env made by an older version: secrets that .env.example has gained since are added, nothing is changed.
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      *=change-me)
        key=${line%%=*}
        if ! grep -q "^$key=" "$DIR/.env"; then
          printf '%s=%s
' "$key" "$(random_secret)" >> "$DIR/.env"
          note "added $key to $DIR/.env"
        fi ;;
    esac
  done < "$DIR/.env.example"
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
    # "mosquitto" is the broker's name inside the compose network (the bridge connects to it by that name);
    # emqx1.denen .. emqx3.denen are the EMQX nodes' names in the clustered path (cluster/docker-compose.yml).
    for n in $NAMES mosquitto emqx1.denen emqx2.denen emqx3.denen localhost; do
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
  note "made the broker certificate for: $(printf '%s ' $NAMES)mosquitto emqx1.denen emqx2.denen emqx3.denen localhost"
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

# remove_login USER: take USER's entry out of the broker's password file.
remove_login() {
  [ -f "$PASSWD" ] || return 0
  grep -v "^$1:" "$PASSWD" > "$TMP.passwd" || true
  mv "$TMP.passwd" "$PASSWD"
}

for gw in "$@"; do
  valid_id "$gw" \
    || die "'$gw' is not a valid gateway id (a-z, 0-9, '_', '-'; starts with a letter or digit; at most 63)"
  case $gw in denen-*) die "'$gw': gateway ids starting with 'denen-' are reserved for the backend's own logins" ;; esac
done

# numbered_logins KIND COUNT: logins denen-KIND-1 .. denen-KIND-COUNT, each in secrets/KIND-<n>/; without COUNT, as
# many as exist already, at least one. The single login denen-KIND of earlier versions is taken out: a login is its
# client id, so processes sharing one took each other's session over.
numbered_logins() {
  if grep -q "^denen-$1:" "$PASSWD" 2>/dev/null; then
    remove_login "denen-$1"
    note "removed the old shared $1 login denen-$1 (replaced by denen-$1-1 ...); delete $SECRETS/$1"
  fi
  count=$2
  if [ -z "$count" ]; then
    count=1
    while [ -d "$SECRETS/$1-$((count + 1))" ]; do count=$((count + 1)); done
  fi
  n=1
  while [ "$n" -le "$count" ]; do
    mkdir -p "$SECRETS/$1-$n"
    ensure_login "denen-$1-$n" "$SECRETS/$1-$n/mqtt-password" 0
    cp "$CA_DIR/ca.crt" "$SECRETS/$1-$n/ca.pem"
    n=$((n + 1))
  done
}

# Bridge logins denen-bridge-1 .. (-b).
numbered_logins bridge "$BRIDGES"

# The console's logins: staff commands to the gateways, their state and command results (mosquitto/acl); one for
# the console service, one for denen ack on the command line beside it.
for login in console console-cli; do
  mkdir -p "$SECRETS/$login"
  ensure_login "denen-$login" "$SECRETS/$login/mqtt-password" 0
  cp "$CA_DIR/ca.crt" "$SECRETS/$login/ca.pem"
done
# Consumer logins denen-consumer-1 .. (-c): each node's retained state (bridge.yaml node_state), read-only
# (mosquitto/acl).
numbered_logins consumer "$CONSUMERS"
# The key that signs the acknowledgement links (HMAC-SHA256); made once: a new one invalidates every link sent.
if [ ! -s "$SECRETS/console/link-secret" ]; then
  openssl rand -base64 48 > "$TMP" && mv "$TMP" "$SECRETS/console/link-secret"
  note "made secrets/console/link-secret (the console's link-signing key)"
fi

for gw in "$@"; do
  if [ "$REVOKE" = 1 ]; then
    if grep -q "^$gw:" "$PASSWD" 2>/dev/null || [ -d "$GW_DIR/$gw" ]; then
      remove_login "$gw"
      rm -rf "${GW_DIR:?}/$gw"
      note "revoked gateway $gw: locked out once the broker restarts (docker compose restart mosquitto)"
    else
      note "gateway $gw has no login; nothing to revoke"
    fi
    continue
  fi
  mkdir -p "$GW_DIR/$gw"
  ensure_login "$gw" "$GW_DIR/$gw/mqtt-password" "$ROTATE"
  cp "$CA_DIR/ca.crt" "$GW_DIR/$gw/ca.pem"
  # The folder is the hand-off to the installer, used as it is: config.yaml goes beside these files, so the
  # paths in mqtt.yaml are relative to it (denen resolves them against the config's folder, on the laptop, in a
  # flashed bundle and in /etc/denen alike). Written on every run: -n and -p may have changed.
  cat > "$TMP.mqtt" <<EOF
# The mqtt: section of gateway $gw's config.yaml, made by make-credentials.sh. gateway.id must be $gw.
# Keep config.yaml in this folder, beside mqtt-password and ca.pem: the paths below are relative to it.
mqtt:
  host: $BROKER_HOST
  port: $PORT
  username: $gw
  password_file: mqtt-password
  tls:
    ca_file: ca.pem
  topic_prefix: denen/v1
EOF
  mv "$TMP.mqtt" "$GW_DIR/$gw/mqtt.yaml"
  printf '# ---- gateway %s ----\n' "$gw"
  printf '# for the installer, as it is: %s/ (mqtt-password, ca.pem, mqtt.yaml)\n' "$GW_DIR/$gw"
  [ "$ROTATE" = 0 ] || printf '# a new password: flash the gateway again with this folder\n'
  cat "$GW_DIR/$gw/mqtt.yaml"
  printf '\n'
done
chmod 600 "$PASSWD"

# ---- the broker's logins and ACLs (dynamic-security plugin) ---------------------------------------------------
# Mosquitto's acl_file checks no SUBSCRIBE, only each delivery, and a shared subscription picks its member before
# that check: a gateway login joining $share/denen-bridge/... swallowed a share of every gateway's messages. The
# dynamic-security plugin checks every SUBSCRIBE against the whole filter, $share/<group>/ included, so the broker
# loads the file made here, on every run, from the passwd file and the rules in mosquitto/acl.

# Check mosquitto/acl first, so that a bad rule is reported with its line.
line_no=0
while IFS= read -r line || [ -n "$line" ]; do
  line_no=$((line_no + 1))
  set -f
  # shellcheck disable=SC2086 # split the rule into its words
  set -- $line
  set +f
  case ${1:-#} in '#'*) continue ;; esac
  [ $# -eq 3 ] || die "$ACL:$line_no: expected '<who> <access> <topic>', got: $line"
  case $1 in gateway|bridge|console|consumer) ;; *) die "$ACL:$line_no: '$1' is not gateway, bridge, console or consumer" ;; esac
  case $2 in
    publishClientSend|publishClientReceive|subscribeLiteral|subscribePattern|unsubscribeLiteral|unsubscribePattern) ;;
    *) die "$ACL:$line_no: '$2' is not an access type of the dynamic-security plugin" ;;
  esac
  case $3 in *'"'*|*\\*) die "$ACL:$line_no: a topic must not contain '\"' or '\\'" ;; esac
done < "$ACL"

# acl_json WHO NAME: the rules of mosquitto/acl for WHO as JSON acl objects, %u replaced by NAME (a-z0-9_-).
acl_json() {
  acl_who=$1
  acl_name=$2
  sep=""
  while IFS= read -r line || [ -n "$line" ]; do
    set -f
    # shellcheck disable=SC2086 # split the rule into its words
    set -- $line
    set +f
    [ $# -eq 3 ] && [ "$1" = "$acl_who" ] || continue
    printf '%s\n        {"acltype": "%s", "topic": "%s", "allow": true}' "$sep" "$2" \
      "$(printf '%s' "$3" | sed "s/%u/$acl_name/g")"
    sep=","
  done < "$ACL"
}

{
  printf '{\n  "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": false, "subscribe": false,'
  printf ' "unsubscribe": true},\n  "groups": [],\n  "clients": ['
  sep=""
  roles=""
  while IFS=: read -r user hash || [ -n "$user" ]; do
    [ -n "$user" ] || continue
    case $hash in '$7$'*) ;; *) die "the passwd entry of $user is not a mosquitto_passwd -U hash (\$7\$...)" ;; esac
    case $user in
      denen-bridge-*) role=denen-bridge ;;
      denen-console|denen-console-cli) role=denen-console ;;
      denen-consumer-*) role=denen-consumer ;;
      *) role="gateway-$user" ;;
    esac
    case " $roles " in *" $role "*) ;; *) roles="$roles $role" ;; esac
    # mosquitto_passwd's $7$ is the plugin's hash (PBKDF2-SHA512): $7$<iterations>$<salt>$<hash>, both base64.
    iterations=$(printf '%s' "$hash" | cut -d'$' -f3)
    salt=$(printf '%s' "$hash" | cut -d'$' -f4)
    pwhash=$(printf '%s' "$hash" | cut -d'$' -f5)
    # clientid: this login may connect with no other client id (use_username_as_clientid sets it so anyway).
    printf '%s\n    {"username": "%s", "clientid": "%s", "password": "%s", "salt": "%s", "iterations": %s,' \
      "$sep" "$user" "$user" "$pwhash" "$salt" "$iterations"
    printf ' "roles": [{"rolename": "%s"}]}' "$role"
    sep=","
  done < "$PASSWD"
  printf '\n  ],\n  "roles": ['
  sep=""
  for role in $roles; do
    case $role in
      denen-bridge) rules=bridge; name="" ;;
      denen-console) rules=console; name="" ;;
      denen-consumer) rules=consumer; name="" ;;
      *) rules=gateway; name=${role#gateway-} ;;
    esac
    printf '%s\n    {"rolename": "%s", "acls": [' "$sep" "$role"
    acl_json "$rules" "$name"
    printf '\n    ]}'
    sep=","
  done
  printf '\n  ]\n}\n'
} > "$TMP.json"
mv "$TMP.json" "$DYNSEC"

# ---- the same logins for EMQX (the clustered path, cluster/) --------------------------------------------------
# EMQX reads users.csv (bootstrap_type plain: it hashes each password with PBKDF2-SHA512 on import) when a node
# starts and adds the logins it does not have yet; it never changes or removes one it has. The ACL is
# cluster/emqx/acl.conf (the rules of mosquitto/acl, with the login as ${username}), the client id is the login
# (use_username_as_clientid), as on Mosquitto.
EMQX_DIR="$SECRETS/emqx"
mkdir -p "$EMQX_DIR"
printf 'user_id,password,is_superuser\n' > "$TMP.csv"
while IFS=: read -r user hash || [ -n "$user" ]; do
  [ -n "$user" ] || continue
  case $user in
    denen-bridge-*) pwfile="$SECRETS/bridge-${user#denen-bridge-}/mqtt-password" ;;
    denen-console) pwfile="$SECRETS/console/mqtt-password" ;;
    denen-console-cli) pwfile="$SECRETS/console-cli/mqtt-password" ;;
    denen-consumer-*) pwfile="$SECRETS/consumer-${user#denen-consumer-}/mqtt-password" ;;
    *) pwfile="$GW_DIR/$user/mqtt-password" ;;
  esac
  if [ ! -s "$pwfile" ]; then
    note "no $pwfile: login $user is left out of $EMQX_DIR/users.csv (run again with $user to make a new password)"
    continue
  fi
  # Logins are a-z0-9_- and passwords hex (random_secret): nothing to quote in CSV.
  printf '%s,%s,false\n' "$user" "$(cat "$pwfile")" >> "$TMP.csv"
done < "$PASSWD"
mv "$TMP.csv" "$EMQX_DIR/users.csv"
cp "$CA_DIR/ca.crt" "$EMQX_DIR/ca.crt"
cp "$BROKER_DIR/server.crt" "$EMQX_DIR/server.crt"
cp "$BROKER_DIR/server.key" "$EMQX_DIR/server.key"
if ! openssl x509 -in "$EMQX_DIR/server.crt" -noout -text | grep -q 'DNS:emqx1.denen'; then
  note "the broker certificate does not name emqx1.denen .. emqx3.denen (made by an older version): for the" \
       "clustered path, delete $BROKER_DIR/server.crt and run again with -n"
fi
if [ "$ROTATE$REVOKE" != 00 ]; then
  note "EMQX (clustered path) keeps the logins it has: delete each login named from its built-in database" \
       "(dashboard, or DELETE /api/v5/authentication/password_based:built_in_database/users/<id>), then restart" \
       "one EMQX node so that it imports users.csv again (a rotated login comes back with its new password)"
fi
note "done. Load the logins into the broker with: docker compose restart mosquitto"
