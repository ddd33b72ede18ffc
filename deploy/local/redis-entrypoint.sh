#!/bin/sh
# The official image is built with protected mode off, so clients on the compose network reach it without a
# password; do the same here (Redis is never published, see docs/OPERATIONS.md, "Security").
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
