"""Rate limits per API client (or per portal user), in the shared cache: 429 with Retry-After when exceeded.

The counters live in Django's default cache; with several processes (gunicorn workers) it must be a cache they
share — ``CACHE_URL=dbcache://selfops_cache`` (then ``manage.py createcachetable``) or Redis. The local-memory
default counts per process, which is right for one dev server and tests only.
"""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from operations.api.auth import api_client_of


class ClientRateThrottle(SimpleRateThrottle):
    scope = "api_client"

    def __init__(self):
        pass  # the rate depends on the caller: resolved in allow_request

    def get_rate(self):
        return settings.SELFOPS.get("API_THROTTLE_RATE", "600/min")

    def allow_request(self, request, view):
        client = api_client_of(request)
        self.rate = (client.throttle_rate if client is not None and client.throttle_rate else None) or self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        client = api_client_of(request)
        if client is not None:
            ident = f"client-{client.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"anon-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
