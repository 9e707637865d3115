"""Cross-cutting request handling: every permission denial leaves a line in the security log."""

from __future__ import annotations

import logging

security_log = logging.getLogger("selfops.security")

DENIED = {401: "unauthenticated", 403: "permission denied", 429: "locked out"}


class DenialLogMiddleware:
    """Log every 401/403/429 answer with who asked for what, whichever layer refused it (a view, the CSRF check, the
    admin, DRF, axes). Logs the user name and the path, never the body or the query string (they can carry
    secrets)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code in DENIED:
            user = getattr(request, "user", None)
            who = (
                (user.get_username() if hasattr(user, "get_username") else str(user))  # an API client's principal too
                if user is not None and user.is_authenticated
                else "anonymous"
            )
            security_log.warning(
                "%s: user=%s method=%s path=%s status=%s",
                DENIED[response.status_code],
                who,
                request.method,
                request.path,
                response.status_code,
                extra={"security_event": "denied", "user": who, "path": request.path},
            )
        return response
