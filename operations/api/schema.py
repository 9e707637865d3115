"""OpenAPI details: the bearer-key security scheme, every error response on every operation, and the webhooks."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, OpenApiWebhook, extend_schema
from rest_framework import serializers

from operations.api.errors import ERROR_DESCRIPTIONS, ErrorSerializer
from operations.models import WebhookEvent


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "operations.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API client key, `Authorization: Bearer sok_…` (created in the admin or with "
            "`manage.py api_client_create`, shown once).",
        }


class SelfopsAutoSchema(AutoSchema):
    """Adds the error responses an operation can return, in the shared error shape, to what the view declares."""

    def _error_codes(self) -> set[int]:
        codes = {401, 403, 429, 500}
        if "{" in self.path:
            codes.add(404)
        if self.method in ("POST", "PUT", "PATCH"):
            codes |= {400, 415}
        if self.method == "GET" and self._is_list_view():
            codes |= {400, 404}  # a bad filter value; a bad cursor
        return codes

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in sorted(self._error_codes()):
            if str(code) not in responses:
                response = OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[code])
                responses[str(code)] = self._get_response_for_code(response, str(code), direction=direction)
        return responses


# --- webhooks ---------------------------------------------------------------------------------------------------------


class _CasePayload(serializers.Serializer):
    id = serializers.IntegerField()
    reference = serializers.CharField()
    workflow = serializers.CharField()
    status = serializers.CharField()
    finished_at = serializers.DateTimeField(allow_null=True)


class _EscalationPayload(serializers.Serializer):
    id = serializers.IntegerField()
    case_id = serializers.IntegerField()
    queue = serializers.CharField()
    reason = serializers.CharField()
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    status = serializers.CharField()
    resolution = serializers.CharField(allow_blank=True)


class _CaseData(serializers.Serializer):
    case = _CasePayload()


class _EscalationData(serializers.Serializer):
    escalation = _EscalationPayload()


def _event(name: str, data) -> type[serializers.Serializer]:
    return type(
        f"{name}Event",
        (serializers.Serializer,),
        {
            "id": serializers.UUIDField(help_text="The event id (also in X-Selfops-Event-Id): stable across retries."),
            "type": serializers.CharField(),
            "created_at": serializers.DateTimeField(),
            "data": data,
        },
    )


WEBHOOK_HEADERS = [
    OpenApiParameter("X-Selfops-Event-Id", str, OpenApiParameter.HEADER, required=True),
    OpenApiParameter("X-Selfops-Timestamp", int, OpenApiParameter.HEADER, required=True, description="Unix seconds."),
    OpenApiParameter(
        "X-Selfops-Signature",
        str,
        OpenApiParameter.HEADER,
        required=True,
        description='`v1=` + hex HMAC-SHA256 of `f"{timestamp}.{raw_body}"` with the subscription secret.',
    ),
]


def _webhook(event: str, data, description: str) -> OpenApiWebhook:
    event = str(event)
    name = "".join(part.title() for part in event.replace(".", "_").split("_"))
    return OpenApiWebhook(
        name=event,
        decorator=extend_schema(
            summary=f"{event} (signed POST to your subscription URL)",
            description=description + " Answer 2xx within 10 s; anything else is retried with exponential backoff, "
            "then dead-lettered.",
            parameters=WEBHOOK_HEADERS,
            request=_event(name, data),
            responses={200: OpenApiResponse(description="Received (any 2xx).")},
        ),
    )


WEBHOOKS = [
    _webhook(WebhookEvent.CASE_COMPLETED, _CaseData(), "A case you submitted completed."),
    _webhook(WebhookEvent.CASE_REJECTED, _CaseData(), "A case you submitted was rejected."),
    _webhook(WebhookEvent.ESCALATION_OPENED, _EscalationData(), "An escalation opened in one of your queues."),
    _webhook(WebhookEvent.ESCALATION_RESOLVED, _EscalationData(), "An escalation of one of your queues was resolved."),
]
