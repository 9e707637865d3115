"""Input and output shapes of the API. Inputs only check types and presence; the services decide the rest."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from audit.models import AuditEvent
from governance.models import AgentPolicy, PolicyVersion, StopScope, StopSwitch
from governance.services import POLICY_FIELDS
from operations.models import (
    Case,
    Escalation,
    Resolution,
    StepRun,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)

# --- cases ------------------------------------------------------------------------------------------------------------


class CaseSubmitIn(serializers.Serializer):
    workflow = serializers.SlugField(max_length=100, help_text="The workflow key, e.g. `claims`.")
    reference = serializers.CharField(max_length=100, help_text="Your reference, unique per workflow.")
    payload = serializers.DictField(help_text="Validated against the workflow's JSON Schema.")


class CaseOut(serializers.ModelSerializer):
    workflow = serializers.SlugRelatedField(slug_field="key", read_only=True)
    workflow_version = serializers.IntegerField(source="workflow.version", read_only=True)
    current_step = serializers.SlugRelatedField(slug_field="key", read_only=True, allow_null=True)

    class Meta:
        model = Case
        fields = [
            "id",
            "reference",
            "workflow",
            "workflow_version",
            "status",
            "wait_reason",
            "current_step",
            "created_at",
            "updated_at",
            "finished_at",
        ]


class StepRunOut(serializers.ModelSerializer):
    step = serializers.SlugRelatedField(slug_field="key", read_only=True)

    class Meta:
        model = StepRun
        fields = [
            "id",
            "step",
            "attempt",
            "status",
            "agent_key",
            "agent_version",
            "proposal",
            "verdict",
            "policy_version",
            "started_at",
            "finished_at",
            "duration_ms",
            "error",
        ]


class EscalationSummaryOut(serializers.ModelSerializer):
    step = serializers.SlugRelatedField(slug_field="key", read_only=True)

    class Meta:
        model = Escalation
        fields = ["id", "step", "reason", "amount", "queue", "status", "resolution", "created_at", "resolved_at"]


class CaseDetailOut(CaseOut):
    steps = StepRunOut(source="step_runs", many=True, read_only=True)
    escalations = EscalationSummaryOut(many=True, read_only=True)

    class Meta(CaseOut.Meta):
        fields = [*CaseOut.Meta.fields, "payload", "context", "steps", "escalations"]


class CaseCancelIn(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, help_text="Why the case is cancelled (audited).")


class AuditEventOut(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "occurred_at",
            "action",
            "actor_type",
            "actor_id",
            "actor_label",
            "subject_type",
            "subject_id",
            "subject_label",
            "case_id",
            "data",
            "correlation_id",
            "seal_seq",
            "hash",
        ]


# --- escalations ------------------------------------------------------------------------------------------------------


class EscalationOut(serializers.ModelSerializer):
    case_reference = serializers.CharField(source="case.reference", read_only=True)
    step = serializers.SlugRelatedField(slug_field="key", read_only=True)
    claimed_by = serializers.SerializerMethodField()

    class Meta:
        model = Escalation
        fields = [
            "id",
            "case",
            "case_reference",
            "step",
            "reason",
            "reasons",
            "proposal",
            "amount",
            "queue",
            "priority",
            "status",
            "sla_deadline",
            "claimed_by",
            "resolution",
            "resolution_note",
            "resolved_by",
            "resolved_at",
            "created_at",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_claimed_by(self, obj) -> str | None:
        if obj.claimed_by_id:
            return obj.claimed_by.get_username()
        if obj.claimed_by_client_id:
            return f"api client {obj.claimed_by_client.name}"
        return None


class EscalationResolveIn(serializers.Serializer):
    resolution = serializers.ChoiceField(choices=Resolution.choices)
    note = serializers.CharField(max_length=4000, help_text="Required: why (audited).")
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0, required=False, allow_null=True)
    outcome = serializers.CharField(max_length=100, required=False, allow_blank=True)
    instruction = serializers.CharField(max_length=2000, required=False, allow_blank=True)


# --- governance -------------------------------------------------------------------------------------------------------


class PolicyVersionOut(serializers.ModelSerializer):
    class Meta:
        model = PolicyVersion
        fields = ["number", *POLICY_FIELDS, "note", "created_by", "created_at"]


class AgentPolicyOut(serializers.ModelSerializer):
    current_version = PolicyVersionOut(read_only=True, allow_null=True)

    class Meta:
        model = AgentPolicy
        fields = ["agent_key", "workflow_key", "step_key", "name", "current_version", "created_at"]
        extra_kwargs = {
            "workflow_key": {"help_text": "With step_key: the one workflow step this policy is narrowed to."},
            "step_key": {"help_text": "Empty for the agent's general policy (every step it runs)."},
        }


class StopSwitchOut(serializers.ModelSerializer):
    class Meta:
        model = StopSwitch
        fields = ["id", "scope", "target", "engaged", "reason", "changed_by", "changed_at"]


class StopIn(serializers.Serializer):
    scope = serializers.ChoiceField(choices=StopScope.choices)
    target = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    reason = serializers.CharField(max_length=2000)


# --- webhooks ---------------------------------------------------------------------------------------------------------


class SubscriptionIn(serializers.Serializer):
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEvent.choices), min_length=1)


class SubscriptionOut(serializers.ModelSerializer):
    class Meta:
        model = WebhookSubscription
        fields = ["id", "url", "events", "active", "created_at"]


class SubscriptionCreatedOut(SubscriptionOut):
    secret = serializers.CharField(read_only=True, help_text="Signs the deliveries. Shown this once: keep it.")

    class Meta(SubscriptionOut.Meta):
        fields = [*SubscriptionOut.Meta.fields, "secret"]


class DeliveryOut(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "subscription",
            "event_id",
            "event_type",
            "payload",
            "status",
            "attempts",
            "log",
            "next_attempt_at",
            "created_at",
            "delivered_at",
            "dead_lettered_at",
        ]


# --- metrics ----------------------------------------------------------------------------------------------------------


class MetricsSummaryOut(serializers.Serializer):
    cases_by_status = serializers.DictField(child=serializers.IntegerField())
    cases_total = serializers.IntegerField()
    straight_through_rate = serializers.FloatField(
        allow_null=True, help_text="Share of finished cases that never needed a human (null: none finished yet)."
    )
    escalations_open_by_reason = serializers.DictField(child=serializers.IntegerField())
    cycle_time_seconds_p50 = serializers.FloatField(allow_null=True)
    cycle_time_seconds_p95 = serializers.FloatField(allow_null=True)
    finished_cases = serializers.IntegerField()
