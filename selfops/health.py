"""Liveness and readiness endpoints for load balancers and orchestrators."""

from django.conf import settings
from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """The process is up. Touches nothing."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """The database and the broker are reachable; 503 otherwise."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # the point is to report, not to crash
        checks["database"] = f"error: {type(exc).__name__}"
    if settings.Q_CLUSTER.get("redis"):
        try:
            import redis

            redis.Redis.from_url(settings.Q_CLUSTER["redis"], socket_timeout=2).ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {type(exc).__name__}"
    else:
        checks["broker"] = checks["database"]  # the ORM broker lives in the database
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
