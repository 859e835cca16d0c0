#!/usr/bin/env bash
# The local services the tests use, up and ready: PostgreSQL on 127.0.0.1:5432 (trust auth for
# local TCP connections, a database `test`: see NANOGATE_TEST_PG_URL in the test conftests) and
# Redis on 127.0.0.1:6379. Installs them with apt when missing and starts them when down; when
# they already run it only checks them, in a fraction of a second. sudo only when not root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
PG_PORT=5432
PG_CLUSTER=main
REDIS_PORT=6379
PG=(-h 127.0.0.1 -p "$PG_PORT" -U postgres)
export PGCONNECT_TIMEOUT=3

# wait_for WHAT COMMAND...: up to 30 s for COMMAND to succeed.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 30); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "$what did not come up" >&2
  return 1
}

test_database_answers() {
  command -v psql >/dev/null && psql "${PG[@]}" -w -d test -Atqc 'SELECT 1' >/dev/null 2>&1
}

postgres() {
  test_database_answers && return 0
  command -v pg_ctlcluster >/dev/null || "$HERE/apt-install.sh" postgresql
  local version conf
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  [ -n "$version" ] || version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  conf=/etc/postgresql/$version/$PG_CLUSTER
  [ -d "$conf" ] || $SUDO pg_createcluster --port "$PG_PORT" "$version" "$PG_CLUSTER"
  # The first matching line wins, so a trust line on top lets the tests connect as postgres
  # without a password, whatever the distribution's default below it says.
  local trust='^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust'
  if ! $SUDO grep -qE "$trust" "$conf/pg_hba.conf"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"
    pg_isready -h 127.0.0.1 -p "$PG_PORT" -q && $SUDO pg_ctlcluster "$version" "$PG_CLUSTER" reload
  fi
  if ! pg_isready -h 127.0.0.1 -p "$PG_PORT" -q; then
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start || true
  fi
  wait_for "PostgreSQL on 127.0.0.1:$PG_PORT" pg_isready -h 127.0.0.1 -p "$PG_PORT" -q
  local exists="SELECT 1 FROM pg_database WHERE datname = 'test'"
  [ -n "$(psql "${PG[@]}" -w -d postgres -Atc "$exists")" ] || createdb "${PG[@]}" -w test
  test_database_answers || {
    echo "PostgreSQL runs, but postgres@127.0.0.1:$PG_PORT/test does not answer" \
      "without a password" >&2
    return 1
  }
}

redis_answers() {
  command -v redis-cli >/dev/null \
    && [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

redis() {
  redis_answers && return 0
  command -v redis-server >/dev/null || "$HERE/apt-install.sh" redis-server
  # Installing may have started it as a service already.
  redis_answers && return 0
  # A throwaway cache: nothing saved, so any writable folder will do as its directory.
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/nanogate-redis.log"
  wait_for "Redis on 127.0.0.1:$REDIS_PORT" redis_answers
}

postgres
redis
