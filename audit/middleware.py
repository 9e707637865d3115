"""Every request runs under a correlation id, so the audit events it writes can be tied together (and to logs)."""

import re
import uuid

from audit.context import correlation

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class CorrelationIdMiddleware:
    """Honour a sane upstream ``X-Request-ID`` (a proxy's), else make one; echo it in the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get(HEADER, "")
        request_id = incoming if _ACCEPTABLE.match(incoming) else uuid.uuid4().hex
        request.correlation_id = request_id
        with correlation(request_id):
            response = self.get_response(request)
        response[HEADER] = request_id
        return response
