#!/usr/bin/env bash
# Sustained POST /api/v1/cases/ rate: gunicorn (2 workers) on a throwaway PostgreSQL (run as root, like scripts/test.sh),
# driven by locust from its own virtualenv (.venv-load, see README). USERS=16 DURATION=60s by default.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export SELFOPS_VAR_DIR=$(mktemp -d /tmp/selfops-bench.XXXX)
PGTMP=$(mktemp -d /tmp/selfops-bench-pg.XXXX); chmod 755 $PGTMP; chown postgres $PGTMP
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
WEB=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  [[ -n ${GPID:-} ]] && kill -- -$GPID 2>/dev/null
  [[ -f $PGTMP/redis.pid ]] && kill "$(cat $PGTMP/redis.pid)" 2>/dev/null
  runuser -u postgres -- pg_ctl -D $PGTMP/data -m immediate stop >/dev/null 2>&1; rm -rf $PGTMP $SELFOPS_VAR_DIR
}
trap cleanup EXIT
runuser -u postgres -- initdb -D $PGTMP/data -U selfops -A trust -E UTF8 --no-sync >/dev/null
runuser -u postgres -- pg_ctl -D $PGTMP/data -l $PGTMP/server.log -w start -o "-p $PORT -k $PGTMP -c listen_addresses=127.0.0.1 -c max_connections=100" >/dev/null
runuser -u postgres -- createdb -h 127.0.0.1 -p $PORT -U selfops selfops
export DATABASE_URL=postgres://selfops@127.0.0.1:$PORT/selfops DEBUG=false
# The rate-limit counters need a cache shared by the gunicorn workers: Redis when installed (as in production), else
# the database cache (which counts its rows on every write: slower).
if command -v redis-server >/dev/null; then
  RPORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir $PGTMP \
    --pidfile $PGTMP/redis.pid --logfile $PGTMP/redis.log >/dev/null
  export CACHE_URL=rediscache://127.0.0.1:$RPORT/1
else
  export CACHE_URL=dbcache://selfops_cache
fi
echo "cache: $CACHE_URL; gunicorn: ${WORKERS:-2} workers × ${THREADS:-4} threads" >&2
$PY manage.py migrate -v0 && $PY manage.py createcachetable && $PY manage.py load_demo --policies 2000 >/dev/null
KEY=$($PY manage.py api_client_create load --scopes cases:write cases:read --throttle-rate 100000000/min 2>/dev/null)
setsid .venv/bin/gunicorn selfops.wsgi -w ${WORKERS:-2} --threads ${THREADS:-4} -b 127.0.0.1:$WEB --access-logfile /dev/null --error-logfile $SELFOPS_VAR_DIR/gunicorn.log &
GPID=$!
sleep 3
SELFOPS_API_KEY=$KEY timeout 200 ${LOCUST:-.venv-load/bin/locust} -f benchmarks/locustfile.py --host http://127.0.0.1:$WEB \
  --headless -u ${USERS:-16} -r 16 -t ${DURATION:-60s} --csv $SELFOPS_VAR_DIR/result --only-summary 2>&1 | tail -25
$PY - <<'PY'
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "selfops.settings"); django.setup()
from operations.models import Case, IdempotencyRecord
print("cases", Case.objects.count(), "idempotency records", IdempotencyRecord.objects.count())
PY
