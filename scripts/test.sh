#!/usr/bin/env bash
# The whole test suite: on a throwaway PostgreSQL that this script starts (and stops, also on failure), then on
# SQLite. Exits non-zero if either run fails. Extra arguments go to pytest (e.g. scripts/test.sh -k engine).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export DJANGO_ALLOW_ASYNC_UNSAFE=true

say() { printf '\n==== %s ====\n' "$*"; }
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CLEANUPS=()
trap 'for c in "${CLEANUPS[@]}"; do $c; done' EXIT

# --- static checks: bandit on our code, pip-audit on the installed (locked) dependencies ----------------------------
say "bandit (medium and high severity fail the run; low findings are documented in README, Security)"
BANDIT_STATUS=passed
$PY -m bandit -q -r selfops operations governance audit -x '*/migrations/*' -ll || BANDIT_STATUS=FAILED
say "pip-audit (the locked dependencies: requirements.lock)"
AUDIT_OUT=$(timeout 180 $PY -m pip_audit --progress-spinner off -r requirements.lock --no-deps --disable-pip 2>&1); AUDIT_RC=$?
AUDIT_SKIPPED=$(grep -c "could not be audited" <<<"$AUDIT_OUT" || true)
AUDIT_STATUS=passed
if grep -q "Found [0-9]* known vulnerabilit" <<<"$AUDIT_OUT"; then
  echo "$AUDIT_OUT"; AUDIT_STATUS=FAILED
elif [[ $AUDIT_RC != 0 || $AUDIT_SKIPPED -gt 0 ]]; then
  echo "$AUDIT_OUT" | head -3
  echo "!! pip-audit could not reach its vulnerability service from here: $AUDIT_SKIPPED packages were NOT audited."
  echo "!! This run does not know whether the dependencies have known vulnerabilities (continuing)."
  AUDIT_STATUS="NOT RUN (no vulnerability service)"
else
  echo "$AUDIT_OUT"
fi

# --- Redis, for the broker fault tests (tests skip with a message when TEST_REDIS_URL is unset) -------------------
REDIS_BIN=$(command -v redis-server || true)
if [[ -z $REDIS_BIN && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "redis-server not found: installing Debian's redis-server"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || true
  REDIS_BIN=$(command -v redis-server || true)
fi
if [[ -n $REDIS_BIN ]]; then
  REDIS_DIR=$(mktemp -d /tmp/selfops-redis.XXXXXX)
  REDIS_PORT=$(free_port)
  stop_redis() {
    [[ -f $REDIS_DIR/redis.pid ]] && kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null
    sleep 0.2; rm -rf "$REDIS_DIR"
  }
  if "$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
       --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >/dev/null; then
    CLEANUPS+=(stop_redis)
    export TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    say "throwaway Redis on 127.0.0.1:$REDIS_PORT"
  fi
else
  echo "!! redis-server is not installed: the Redis broker fault tests will be skipped"
fi

find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  local d; for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb ]] && { echo "$d"; return 0; }; done
  return 1
}

PG_BIN=$(find_pg_bin || true)
if [[ -z $PG_BIN && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "PostgreSQL binaries not found: installing Debian's postgresql"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || true
  PG_BIN=$(find_pg_bin || true)
fi

# Browser tests drive Debian's Chromium (never a downloaded browser); without it they are skipped with a message.
if [[ ! -x /usr/bin/chromium && $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "Chromium not found: installing Debian's chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true
fi
[[ -x /usr/bin/chromium ]] || echo "WARNING: /usr/bin/chromium is missing: browser tests (-m browser) will be skipped" >&2

# The SQLite run goes in the background, alongside the PostgreSQL run (the two share no files: the SQLite run has its
# own var folder), so the whole suite takes about as long as its longer half on two cores. Its output is printed
# after the PostgreSQL run. SELFOPS_TEST_SERIAL=1 runs them one after the other, SQLite second.
SQLITE_VAR="${SELFOPS_VAR_DIR:-var}/sqlite-run"
SQLITE_LOG=$(mktemp /tmp/selfops-sqlite-run.XXXXXX)
stop_sqlite() { [[ -n ${SQLITE_PID:-} ]] && pkill -TERM -P "$SQLITE_PID" 2>/dev/null; rm -f "$SQLITE_LOG" "$SQLITE_LOG.rc"; }
CLEANUPS+=(stop_sqlite)
run_sqlite() {
  mkdir -p "$SQLITE_VAR"
  env -u DATABASE_URL SELFOPS_VAR_DIR="$SQLITE_VAR" $PY -m pytest -p no:cacheprovider "$@"
}
SQLITE_PID=
if [[ -n $PG_BIN && -z ${SELFOPS_TEST_SERIAL:-} ]]; then
  say "test suite on SQLite: started in the background (its output follows the PostgreSQL run)"
  ( run_sqlite "$@" >"$SQLITE_LOG" 2>&1; echo $? >"$SQLITE_LOG.rc" ) &
  SQLITE_PID=$!
fi

PG_STATUS=skipped
if [[ -n $PG_BIN ]]; then
  PGTMP=$(mktemp -d /tmp/selfops-pg.XXXXXX)
  chmod 755 "$PGTMP"
  RUN=()
  if [[ $(id -u) == 0 ]]; then chown postgres "$PGTMP" 2>/dev/null && RUN=(runuser -u postgres --); fi
  PORT=$(free_port)
  stop_pg() {
    "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGTMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGTMP"
  }
  CLEANUPS+=(stop_pg)
  say "starting a throwaway PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PORT"
  if "${RUN[@]}" "$PG_BIN/initdb" -D "$PGTMP/data" -U selfops -A trust -E UTF8 --no-sync >"$PGTMP/initdb.log" 2>&1 &&
     "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/server.log" -w -t 60 start \
       -o "-p $PORT -k $PGTMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >/dev/null; then
    say "test suite on PostgreSQL"
    # the database-restart fault test stops and starts this server itself
    PG_OPTS="-p $PORT -k $PGTMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    SELFOPS_TEST_PG_STOP="${RUN[*]} $PG_BIN/pg_ctl -D $PGTMP/data -m fast -w -t 60 stop" \
    SELFOPS_TEST_PG_START="${RUN[*]} $PG_BIN/pg_ctl -D $PGTMP/data -l $PGTMP/server.log -w -t 60 start -o '$PG_OPTS'" \
    DATABASE_URL="postgres://selfops@127.0.0.1:$PORT/selfops" $PY -m pytest "$@"
    rc=$?
    [[ $rc == 0 ]] && PG_STATUS=passed || PG_STATUS="FAILED (exit $rc)"
  else
    cat "$PGTMP"/*.log 2>/dev/null | tail -20
    PG_STATUS="FAILED (PostgreSQL did not start)"
  fi
else
  cat >&2 <<'WARN'

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  WARNING: PostgreSQL (initdb, pg_ctl) is not installed and could not be installed.                    !!
!!  The suite runs on SQLite ONLY: concurrency and locking tests that need PostgreSQL are skipped.       !!
!!  Install PostgreSQL (Debian: apt-get install postgresql) to run the suite as CI does.                 !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARN
fi

say "test suite on SQLite"
if [[ -n $SQLITE_PID ]]; then
  wait "$SQLITE_PID"
  cat "$SQLITE_LOG"
  rc=$(cat "$SQLITE_LOG.rc" 2>/dev/null || echo 1)
else
  run_sqlite "$@"
  rc=$?
fi
[[ $rc == 0 ]] && SQLITE_STATUS=passed || SQLITE_STATUS="FAILED (exit $rc)"

say "summary: PostgreSQL $PG_STATUS · SQLite $SQLITE_STATUS · bandit $BANDIT_STATUS · pip-audit $AUDIT_STATUS"
[[ $SQLITE_STATUS == passed && ( $PG_STATUS == passed || $PG_STATUS == skipped ) && $BANDIT_STATUS == passed && \
   $AUDIT_STATUS != FAILED ]]
