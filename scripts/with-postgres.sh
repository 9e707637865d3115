#!/usr/bin/env bash
# Run a command against a throwaway PostgreSQL (migrated), e.g. for benchmarks:
#   scripts/with-postgres.sh .venv/bin/python manage.py bench engine --cases 2000
# The cluster lives in a temporary folder on a free port and is stopped when the command ends, also on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PG_BIN=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -1)")
[[ -x $PG_BIN/initdb ]] || { echo "PostgreSQL binaries (initdb, pg_ctl) not found" >&2; exit 2; }
PGTMP=$(mktemp -d /tmp/selfops-pg.XXXXXX); chmod 755 "$PGTMP"
RUN=(); [[ $(id -u) == 0 ]] && chown postgres "$PGTMP" && RUN=(runuser -u postgres --)
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap '"${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGTMP/data" -m fast stop >/dev/null 2>&1; rm -rf "$PGTMP"' EXIT
"${RUN[@]}" "$PG_BIN/initdb" -D "$PGTMP/data" -U selfops -A trust -E UTF8 --no-sync >/dev/null || exit 2
"${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/server.log" -w -t 60 start \
  -o "-p $PORT -k $PGTMP -c listen_addresses=127.0.0.1 -c max_connections=300 ${PG_OPTIONS:-}" >/dev/null || exit 2
$PY -c "import psycopg; psycopg.connect('postgresql://selfops@127.0.0.1:$PORT/postgres', autocommit=True).execute('CREATE DATABASE selfops')" || exit 2
export DATABASE_URL="postgres://selfops@127.0.0.1:$PORT/selfops"
echo "PostgreSQL on 127.0.0.1:$PORT (DATABASE_URL=$DATABASE_URL)" >&2
$PY manage.py migrate --noinput -v0 || exit 2
"$@"
