#!/bin/sh
# As the official image does: listen on every interface without protected mode (the network is compose's own),
# run as the redis user, keep the append-only file in /data (the working folder).
set -e
if [ "$1" = "redis-server" ]; then
  shift
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"
