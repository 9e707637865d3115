"""One JSON shape for every API error: ``{"error": code, "message": ..., "fields": {...}}`` with the right status.

Domain errors carry their own code and status (``operations.errors``); DRF's errors are mapped here; anything else
is a 500 that is logged with a correlation id, which the caller gets in the body and the ``X-Correlation-ID`` header
— never a stack trace.
"""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import set_rollback

from audit.context import current_correlation_id
from governance.errors import GovernanceError
from operations.errors import DomainError

logger = logging.getLogger("selfops.api")


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="A stable, machine-readable code, e.g. 'invalid', 'not_found'.")
    message = serializers.CharField(help_text="What went wrong, for a person to read.")
    fields = serializers.DictField(
        child=serializers.CharField(), help_text="Per field (dotted path): what is wrong with it."
    )
    correlation_id = serializers.CharField(required=False, help_text="Quote it to support (500 only).")


ERROR_DESCRIPTIONS = {
    400: "Bad input: `fields` names every field error; nothing was stored.",
    401: "No credential, or an unknown, rotated or revoked API key.",
    403: "The credential lacks the scope this endpoint needs.",
    404: "Absent, or not yours to see (the two are not told apart).",
    409: "Conflict with the current state (already resolved, claimed by someone else, in flight, finished).",
    415: "Unsupported media type: send `application/json`.",
    422: "Understood but refused (e.g. an Idempotency-Key reused with another body).",
    429: "Rate limit exceeded: wait `Retry-After` seconds.",
    500: "Unexpected error; logged under the returned `correlation_id`.",
}


def error_responses(*codes: int) -> dict:
    """OpenAPI responses for the given error statuses plus the ones any authenticated endpoint may return."""
    every = {401, 403, 429, 500, *codes}
    return {code: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code]) for code in sorted(every)}


def _flatten(detail, prefix: str = "") -> dict[str, str]:
    if isinstance(detail, dict):
        out: dict[str, str] = {}
        for key, value in detail.items():
            name = "payload" if key == "non_field_errors" and not prefix else key
            out.update(_flatten(value, f"{prefix}.{name}" if prefix else str(name)))
        return out
    if isinstance(detail, list):
        if all(not isinstance(d, dict | list) for d in detail):
            return {prefix or "payload": " ".join(str(d) for d in detail)}
        out = {}
        for i, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix or "payload": str(detail)}


def _body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": code, "message": message, "fields": fields or {}}


def exception_handler(exc, context):
    headers: dict[str, str] = {}
    if isinstance(exc, Http404 | ObjectDoesNotExist):
        status, body = 404, _body("not_found", "not found")
    elif isinstance(exc, RequestDataTooBig):  # DATA_UPLOAD_MAX_MEMORY_SIZE, checked before the body is parsed
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        status, body = 413, _body("too_large", f"the request body is too large: at most {limit:,} bytes are accepted")
    elif isinstance(exc, DjangoPermissionDenied):
        status, body = 403, _body("forbidden", "not allowed")
    elif isinstance(exc, DomainError):
        status, body = exc.status, _body(exc.code, exc.message, exc.fields)
    elif isinstance(exc, GovernanceError):
        status, body = (400 if exc.fields else 422), _body(exc.code, exc.message, exc.fields)
    elif isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        status, body = 400, _body("invalid", "the request is not valid", fields)
    elif isinstance(exc, exceptions.APIException):
        status = exc.status_code
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        if isinstance(exc, exceptions.Throttled):
            code = "throttled"
        elif status == 401:
            code = "unauthenticated"
        elif status == 403:
            code = "forbidden"
        body = _body(str(code), str(exc.detail))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    else:
        correlation_id = current_correlation_id() or uuid.uuid4().hex
        view = context.get("view")
        logger.error(
            "unhandled API error %s in %s [correlation_id=%s]",
            type(exc).__name__,
            type(view).__name__ if view else "?",
            correlation_id,
            exc_info=exc,
        )
        set_rollback()
        body = _body("server_error", f"unexpected error; quote {correlation_id} to support")
        body["correlation_id"] = correlation_id
        return Response(body, status=500, headers={"X-Correlation-ID": correlation_id})
    set_rollback()
    return Response(body, status=status, headers=headers)


def api_aware_handler(default):
    """Wrap a Django error view (404, 500) so that API paths answer in the API's JSON shape rather than HTML, e.g. a
    path whose id is not a number never reaches a view."""
    from django.http import JsonResponse

    codes = {404: ("not_found", "not found"), 500: ("server_error", "unexpected error")}

    def handler(request, *args, **kwargs):
        response = default(request, *args, **kwargs)
        if not request.path.startswith(("/api/v1/", "/metrics")):
            return response
        code, message = codes.get(response.status_code, ("error", "error"))
        body = _body(code, message)
        if response.status_code >= 500:
            body["correlation_id"] = current_correlation_id() or uuid.uuid4().hex
            logger.error("unhandled error outside the API views [correlation_id=%s]", body["correlation_id"])
        return JsonResponse(body, status=response.status_code)

    return handler
