#!/bin/sh
# First start of an empty PGDATA: initdb with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD, scram auth for
# every host, listening on all interfaces, POSTGRES_DB created. The set-up server listens on a private socket only,
# so a health check (pg_isready) first succeeds against the real server.
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  setup=$(mktemp -d)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$setup/pw"
  initdb --username="$user" --pwfile="$setup/pw" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$setup/pw"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses='' -c unix_socket_directories=$setup" start
    createdb --host="$setup" --username="$user" "$db"
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
  fi
  rmdir "$setup"
  echo "postgres-entrypoint: initialised $PGDATA (user $user, database $db)"
fi
exec "$@"
