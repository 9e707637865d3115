"""API views: thin. Parse input, ask the caller's ``Principal`` for what it may see, call one service or selector,
render. Writes are per-action views that call services (never a serializer's ``save()``), so governance and audit
cannot be bypassed."""

from __future__ import annotations

import re

from django.db.models import Prefetch, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework import generics, status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from audit.context import correlation
from audit.dossier import case_dossier
from audit.filtersets import AuditEventFilterSet
from audit.models import AuditEvent
from audit.verification import verify_status
from governance.models import AgentPolicy, StopSwitch
from governance.services import stop_engage, stop_release
from operations.api import serializers as s
from operations.api.auth import principal
from operations.api.errors import error_responses
from operations.api.idempotency import Answer, idempotent, validate_key
from operations.api.metrics import metrics_summary, prometheus_registry
from operations.api.webhooks import webhook_redeliver, webhook_subscription_create, webhook_subscription_delete
from operations.filtersets import CaseFilterSet, EscalationFilterSet
from operations.models import ApiScope, Case, Escalation, StepRun, WebhookDelivery, WebhookSubscription
from operations.selectors import case_timeline
from operations.services import case_cancel, case_submit, escalation_claim, escalation_resolve

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


class Cursor(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200


class ApiView(generics.GenericAPIView):
    # The base of every API view: the scope each method needs (``required_scopes``), the shared filter backend.

    required_scopes: dict[str, str] = {}
    filter_backends = [DjangoFilterBackend]

    def dispatch(self, request, *args, **kwargs):
        # One correlation id per request: on its audit events, in the log of a 500, and in the X-Correlation-ID
        # header. A caller's X-Request-ID is honoured when it looks like an id.
        offered = request.headers.get("X-Request-ID", "")
        with correlation(offered if _REQUEST_ID.fullmatch(offered) else None) as correlation_id:
            response = super().dispatch(request, *args, **kwargs)
        response["X-Correlation-ID"] = correlation_id
        return response

    @property
    def who(self):
        return principal(self.request)


# --- cases ------------------------------------------------------------------------------------------------------------

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=True,
    description="Unique per request you mean (a UUID). A retry with the same key and body replays the first answer "
    "and creates nothing; the same key with another body is refused (422); while the first is in flight, 409. Kept "
    "at least 24 hours, per client.",
)


class CasesApi(ApiView, generics.ListAPIView):
    required_scopes = {"GET": ApiScope.CASES_READ, "POST": ApiScope.CASES_WRITE}
    serializer_class = s.CaseOut
    filterset_class = CaseFilterSet
    pagination_class = Cursor

    def get_queryset(self):
        return self.who.cases()

    @extend_schema(
        operation_id="cases_list", summary="List your cases", tags=["cases"], responses={200: s.CaseOut(many=True)}
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="cases_submit",
        summary="Submit a case",
        tags=["cases"],
        parameters=[IDEMPOTENCY_KEY],
        request=s.CaseSubmitIn,
        responses={201: s.CaseOut, **error_responses(400, 409, 415, 422)},
    )
    def post(self, request, *args, **kwargs):
        body = request.data  # parsed first: a body that is not JSON is a 415/400 before anything else
        key = validate_key(request.headers.get("Idempotency-Key"))
        data = s.CaseSubmitIn(data=body)
        data.is_valid(raise_exception=True)
        who = self.who

        def work() -> Answer:
            case = case_submit(
                workflow_key=data.validated_data["workflow"],
                reference=data.validated_data["reference"],
                payload=data.validated_data["payload"],
                actor=who.actor,
                submitted_by_client=who.client,
            )
            return Answer(status.HTTP_201_CREATED, s.CaseOut(case).data)

        # Answers are kept per API client; a portal session's key is required but not remembered.
        answer = work() if who.client is None else idempotent(client=who.client, key=key, body=body, work=work)
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
        return Response(answer.body, status=answer.status, headers=headers)


class CaseDetailApi(ApiView, generics.RetrieveAPIView):
    required_scopes = {"GET": ApiScope.CASES_READ}
    serializer_class = s.CaseDetailOut

    def get_queryset(self):
        return self.who.cases().prefetch_related(
            Prefetch("step_runs", queryset=StepRun.objects.select_related("step").order_by("id")),
            Prefetch("escalations", queryset=Escalation.objects.select_related("step").order_by("id")),
        )

    @extend_schema(
        operation_id="cases_retrieve",
        summary="A case with its steps, proposals, verdicts and escalations",
        tags=["cases"],
        responses={200: s.CaseDetailOut, **error_responses(404)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class CaseTimelineApi(ApiView):
    queryset = Case.objects.none()  # for the schema: the object comes from the caller's own cases
    required_scopes = {"GET": ApiScope.CASES_READ}
    serializer_class = s.AuditEventOut

    @extend_schema(
        operation_id="cases_timeline",
        summary="Everything the audit trail holds about a case, in order",
        tags=["cases"],
        responses={200: s.AuditEventOut(many=True), **error_responses(404)},
    )
    def get(self, request, pk: int):
        case = get_object_or_404(self.who.cases(), pk=pk)
        timeline = case_timeline(case=case, visible_escalations=self.who.escalations())
        return Response(s.AuditEventOut(timeline, many=True).data)


class CaseCancelApi(ApiView):
    queryset = Case.objects.none()  # for the schema: the object comes from the caller's own cases
    required_scopes = {"POST": ApiScope.CASES_WRITE}
    serializer_class = s.CaseCancelIn

    @extend_schema(
        operation_id="cases_cancel",
        summary="Cancel an open case",
        tags=["cases"],
        request=s.CaseCancelIn,
        responses={200: s.CaseOut, **error_responses(400, 404, 409, 415)},
    )
    def post(self, request, pk: int):
        case = get_object_or_404(self.who.cases(), pk=pk)
        data = s.CaseCancelIn(data=request.data)
        data.is_valid(raise_exception=True)
        case = case_cancel(case_id=case.pk, actor=self.who.actor, reason=data.validated_data["reason"])
        return Response(s.CaseOut(case).data)


# --- escalations ------------------------------------------------------------------------------------------------------


def _escalations(who):
    return who.escalations().select_related("claimed_by", "claimed_by_client")


class EscalationsApi(ApiView, generics.ListAPIView):
    required_scopes = {"GET": ApiScope.ESCALATIONS_READ}
    serializer_class = s.EscalationOut
    filterset_class = EscalationFilterSet
    pagination_class = Cursor

    def get_queryset(self):
        return _escalations(self.who)

    @extend_schema(operation_id="escalations_list", summary="Escalations of your queues", tags=["escalations"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class EscalationDetailApi(ApiView, generics.RetrieveAPIView):
    required_scopes = {"GET": ApiScope.ESCALATIONS_READ}
    serializer_class = s.EscalationOut

    def get_queryset(self):
        return _escalations(self.who)

    @extend_schema(
        operation_id="escalations_retrieve",
        summary="One escalation",
        tags=["escalations"],
        responses={200: s.EscalationOut, **error_responses(404)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class EscalationClaimApi(ApiView):
    queryset = Escalation.objects.none()  # for the schema: the object comes from the caller's escalations
    required_scopes = {"POST": ApiScope.ESCALATIONS_RESOLVE}
    serializer_class = s.EscalationOut

    @extend_schema(
        operation_id="escalations_claim",
        summary="Claim an escalation to work on it",
        tags=["escalations"],
        request=None,
        responses={200: s.EscalationOut, **error_responses(404, 409)},
    )
    def post(self, request, pk: int):
        escalation = get_object_or_404(self.who.escalations(), pk=pk)
        escalation_claim(escalation_id=escalation.pk, actor=self.who.actor, client=self.who.client)
        return Response(s.EscalationOut(_escalations(self.who).get(pk=pk)).data)


class EscalationResolveApi(ApiView):
    queryset = Escalation.objects.none()  # for the schema: the object comes from the caller's escalations
    required_scopes = {"POST": ApiScope.ESCALATIONS_RESOLVE}
    serializer_class = s.EscalationResolveIn

    @extend_schema(
        operation_id="escalations_resolve",
        summary="Resolve an escalation (a note is required; two at once: one wins, the other gets 409)",
        tags=["escalations"],
        request=s.EscalationResolveIn,
        responses={200: s.EscalationOut, **error_responses(400, 404, 409, 415, 422)},
    )
    def post(self, request, pk: int):
        escalation = get_object_or_404(self.who.escalations(), pk=pk)
        data = s.EscalationResolveIn(data=request.data)
        data.is_valid(raise_exception=True)
        escalation_resolve(escalation_id=escalation.pk, actor=self.who.actor, **data.validated_data)
        return Response(s.EscalationOut(_escalations(self.who).get(pk=pk)).data)


# --- governance and audit ---------------------------------------------------------------------------------------------


class PoliciesApi(ApiView, generics.ListAPIView):
    required_scopes = {"GET": ApiScope.GOVERNANCE_READ}
    serializer_class = s.AgentPolicyOut
    queryset = AgentPolicy.objects.select_related("current_version").order_by("agent_key", "workflow_key", "step_key")

    @extend_schema(operation_id="agents_list", summary="Agents and their current policies", tags=["governance"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class PolicyDetailApi(ApiView, generics.RetrieveAPIView):
    required_scopes = {"GET": ApiScope.GOVERNANCE_READ}
    serializer_class = s.AgentPolicyOut
    queryset = AgentPolicy.objects.filter(workflow_key="", step_key="").select_related("current_version")
    lookup_field = "agent_key"

    @extend_schema(
        operation_id="agents_retrieve",
        summary="One agent's current general policy (policies narrowed to a step are in the list)",
        tags=["governance"],
        responses={200: s.AgentPolicyOut, **error_responses(404)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class StopSwitchesApi(ApiView, generics.ListAPIView):
    required_scopes = {"GET": ApiScope.GOVERNANCE_READ}
    serializer_class = s.StopSwitchOut
    queryset = StopSwitch.objects.order_by("scope", "target")

    @extend_schema(operation_id="stops_list", summary="Stop switches", tags=["governance"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class StopFlipApi(ApiView):
    required_scopes = {"POST": ApiScope.GOVERNANCE_STOP}
    serializer_class = s.StopIn
    engage = True

    def post(self, request):
        data = s.StopIn(data=request.data)
        data.is_valid(raise_exception=True)
        flip = stop_engage if self.engage else stop_release
        switch = flip(actor=self.who.actor, **data.validated_data)
        return Response(s.StopSwitchOut(switch).data)


class StopEngageApi(StopFlipApi):
    engage = True

    @extend_schema(
        operation_id="stops_engage",
        summary="Engage a stop switch (global, workflow or agent)",
        tags=["governance"],
        request=s.StopIn,
        responses={200: s.StopSwitchOut, **error_responses(400, 415, 422)},
    )
    def post(self, request):
        return super().post(request)


class StopReleaseApi(StopFlipApi):
    engage = False

    @extend_schema(
        operation_id="stops_release",
        summary="Release a stop switch; parked cases resume",
        tags=["governance"],
        request=s.StopIn,
        responses={200: s.StopSwitchOut, **error_responses(400, 415, 422)},
    )
    def post(self, request):
        return super().post(request)


class AuditEventsApi(ApiView, generics.ListAPIView):
    """Clients see the events of their own cases and their own actions; portal users with
    ``audit.view_auditevent`` see everything."""

    required_scopes = {"GET": ApiScope.AUDIT_READ}
    serializer_class = s.AuditEventOut
    filterset_class = AuditEventFilterSet
    pagination_class = Cursor

    def get_queryset(self):
        who = self.who
        qs = AuditEvent.objects.all()
        if who.client is not None:
            return qs.filter(
                Q(case_id__in=who.cases().values("pk")) | Q(actor_type="api_client", actor_id=str(who.client.pk))
            )
        return qs

    @extend_schema(operation_id="audit_events_list", summary="Audit events by subject", tags=["audit"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class AuditChainStatusApi(ApiView):
    queryset = AuditEvent.objects.none()
    required_scopes = {"GET": ApiScope.AUDIT_READ}

    @extend_schema(
        operation_id="audit_chain_status",
        summary="The hash chain at a glance: sealed up to, head hash, unsealed backlog, last verification",
        tags=["audit"],
        responses={200: OpenApiTypes.OBJECT, **error_responses()},
    )
    def get(self, request):
        return Response(verify_status().as_dict())


class CaseDossierApi(ApiView):
    """Everything that happened to one case, with the chain proof (for a customer contesting a decision or a
    regulator): only for cases the caller may see."""

    queryset = Case.objects.none()
    required_scopes = {"GET": ApiScope.AUDIT_READ}

    @extend_schema(
        operation_id="cases_dossier",
        summary="The case's dossier: its events, each with its seal number and hashes, and a signed head digest",
        tags=["audit"],
        responses={200: OpenApiTypes.OBJECT, **error_responses(404)},
    )
    def get(self, request, pk: int):
        case = get_object_or_404(self.who.cases(), pk=pk)
        return Response(case_dossier(case.pk))


# --- metrics ----------------------------------------------------------------------------------------------------------


class MetricsSummaryApi(ApiView):
    required_scopes = {"GET": ApiScope.METRICS_READ}
    serializer_class = s.MetricsSummaryOut

    @extend_schema(operation_id="metrics_summary", summary="The dashboard's figures", tags=["metrics"])
    def get(self, request):
        return Response(s.MetricsSummaryOut(metrics_summary()).data)


class PrometheusMetricsApi(ApiView):
    """Prometheus exposition. Scrape it with a key that holds ``metrics:read`` (Prometheus ``authorization``)."""

    required_scopes = {"GET": ApiScope.METRICS_READ}

    @extend_schema(exclude=True)
    def get(self, request):
        return HttpResponse(generate_latest(prometheus_registry()), content_type=CONTENT_TYPE_LATEST)


# --- webhooks ---------------------------------------------------------------------------------------------------------


class ClientOnly:
    """Webhook subscriptions belong to API clients: a portal session has none."""

    def subscriptions(self):
        client = self.who.client
        return WebhookSubscription.objects.filter(client=client) if client else WebhookSubscription.objects.none()

    def deliveries(self):
        client = self.who.client
        return WebhookDelivery.objects.filter(subscription__client=client) if client else WebhookDelivery.objects.none()


class SubscriptionsApi(ClientOnly, ApiView, generics.ListAPIView):
    required_scopes = {"GET": ApiScope.WEBHOOKS_MANAGE, "POST": ApiScope.WEBHOOKS_MANAGE}
    serializer_class = s.SubscriptionOut

    def get_queryset(self):
        return self.subscriptions().filter(active=True)

    @extend_schema(operation_id="webhook_subscriptions_list", summary="Your webhook subscriptions", tags=["webhooks"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="webhook_subscriptions_create",
        summary="Subscribe to events; the signing secret is returned this once",
        tags=["webhooks"],
        request=s.SubscriptionIn,
        responses={201: s.SubscriptionCreatedOut, **error_responses(400, 415)},
    )
    def post(self, request):
        if self.who.client is None:
            from operations.errors import NotAllowed

            raise NotAllowed("webhook subscriptions belong to API clients")
        data = s.SubscriptionIn(data=request.data)
        data.is_valid(raise_exception=True)
        subscription, secret = webhook_subscription_create(
            client=self.who.client, actor=self.who.actor, **data.validated_data
        )
        body = s.SubscriptionCreatedOut(subscription).data | {"secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class SubscriptionDetailApi(ClientOnly, ApiView, generics.RetrieveAPIView):
    required_scopes = {"GET": ApiScope.WEBHOOKS_MANAGE, "DELETE": ApiScope.WEBHOOKS_MANAGE}
    serializer_class = s.SubscriptionOut

    def get_queryset(self):
        return self.subscriptions().filter(active=True)

    @extend_schema(
        operation_id="webhook_subscriptions_retrieve",
        tags=["webhooks"],
        responses={200: s.SubscriptionOut, **error_responses(404)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="webhook_subscriptions_delete",
        summary="Remove a subscription (its pending deliveries are dead-lettered)",
        tags=["webhooks"],
        responses={204: None, **error_responses(404)},
    )
    def delete(self, request, pk: int):
        subscription = self.get_object()
        webhook_subscription_delete(subscription_id=subscription.pk, actor=self.who.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeliveriesApi(ClientOnly, ApiView, generics.ListAPIView):
    required_scopes = {"GET": ApiScope.WEBHOOKS_MANAGE}
    serializer_class = s.DeliveryOut
    pagination_class = Cursor

    def get_queryset(self):
        return self.deliveries()

    @extend_schema(operation_id="webhook_deliveries_list", summary="Delivery log", tags=["webhooks"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class DeliveryDetailApi(ClientOnly, ApiView, generics.RetrieveAPIView):
    required_scopes = {"GET": ApiScope.WEBHOOKS_MANAGE}
    serializer_class = s.DeliveryOut

    def get_queryset(self):
        return self.deliveries()

    @extend_schema(
        operation_id="webhook_deliveries_retrieve",
        summary="One delivery with its attempts",
        tags=["webhooks"],
        responses={200: s.DeliveryOut, **error_responses(404)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class DeliveryRedeliverApi(ClientOnly, ApiView):
    queryset = WebhookDelivery.objects.none()  # for the schema: the object comes from the caller's deliveries
    required_scopes = {"POST": ApiScope.WEBHOOKS_MANAGE}
    serializer_class = s.DeliveryOut

    @extend_schema(
        operation_id="webhook_deliveries_redeliver",
        summary="Send a delivered or dead-lettered event again (same event id)",
        tags=["webhooks"],
        request=None,
        responses={202: s.DeliveryOut, **error_responses(404, 409)},
    )
    def post(self, request, pk: int):
        delivery = get_object_or_404(self.deliveries(), pk=pk)
        delivery = webhook_redeliver(delivery_id=delivery.pk, actor=self.who.actor)
        return Response(s.DeliveryOut(delivery).data, status=status.HTTP_202_ACCEPTED)
