#!/bin/sh
# Entrypoint of the bridge image: started as root, it copies the bridge's MQTT secrets from the read-only mount
# /etc/denen/secrets (owned by whoever ran make-credentials.sh, mode 600) to /run/denen/secrets, owned by the
# bridge's own user and mode 600, then runs the command (denen bridge ...) as that user (uid 10001).
set -eu
if [ "$(id -u)" = 0 ]; then
  install -d -m 700 -o denen -g denen /run/denen/secrets
  for f in /etc/denen/secrets/*; do
    [ -f "$f" ] && install -m 600 -o denen -g denen "$f" /run/denen/secrets/
  done
  exec setpriv --reuid=denen --regid=denen --init-groups -- "$@"
fi
exec "$@"
