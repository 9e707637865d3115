from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ActorKind(models.TextChoices):
    USER = "user", "User"
    AGENT = "agent", "Agent"
    API_CLIENT = "api_client", "API client"
    SYSTEM = "system", "System"


class AuditAction(models.TextChoices):
    CASE_SUBMITTED = "case.submitted", "Case submitted"
    CASE_COMPLETED = "case.completed", "Case completed"
    CASE_REJECTED = "case.rejected", "Case rejected"
    CASE_CANCELLED = "case.cancelled", "Case cancelled"
    CASE_FAILED = "case.failed", "Case failed"
    CASE_PARKED = "case.parked", "Case parked"
    CASE_RESUMED = "case.resumed", "Case resumed"
    CASE_REQUEUED = "case.requeued", "Case re-enqueued by the sweeper"
    STEP_DECIDED = "step.decided", "Step decided"
    STEP_FAILED = "step.failed", "Step failed"
    EFFECT_QUEUED = "effect.queued", "Side effect queued"
    EFFECT_DELIVERED = "effect.delivered", "Side effect delivered"
    EFFECT_RETRY = "effect.retry", "Side effect failed, will retry"
    EFFECT_FAILED = "effect.failed", "Side effect failed for good (needs attention)"
    EFFECT_REQUEUED = "effect.requeued", "Failed side effect handed back for delivery (same idempotency key)"
    EFFECT_CANCELLED = "effect.cancelled", "Failed side effect closed without delivery"
    ESCALATION_OPENED = "escalation.opened", "Escalation opened"
    ESCALATION_CLAIMED = "escalation.claimed", "Escalation claimed"
    ESCALATION_RELEASED = "escalation.released", "Escalation released"
    ESCALATION_RESOLVED = "escalation.resolved", "Escalation resolved"
    WORKFLOW_INSTALLED = "workflow.installed", "Workflow installed"
    POLICY_CHANGED = "policy.changed", "Policy changed"
    STOP_ENGAGED = "stop.engaged", "Stop switch engaged"
    STOP_RELEASED = "stop.released", "Stop switch released"
    REFERENCE_LOADED = "reference.loaded", "Reference data loaded"
    # portal
    ESCALATION_REASSIGNED = "escalation.reassigned", "Escalation reassigned"
    ESCALATION_APPROVAL_PENDING = "escalation.approval_pending", "First approval recorded (four-eyes)"
    ESCALATION_SLA_BREACHED = "escalation.sla_breached", "Escalation SLA breached"
    ESCALATION_RETRY_SUCCEEDED = "escalation.retry_succeeded", "Returned step succeeded"
    RULE_AGENT_SAVED = "agent.rules_saved", "Rule agent version saved"
    AGENT_VERSION_CHANGED = "agent.version_changed", "Agent version rollout changed"
    AGENT_REPLAYED = "agent.replayed", "Agent version replayed on closed cases"
    MODEL_TRAINED = "agent.model_trained", "Agent model trained"
    COST_BUDGET_CHANGED = "governance.cost_budget_changed", "Agent cost budget changed"
    POLICY_PROMOTED = "policy.promoted", "Agent promoted"
    POLICY_DEMOTED = "policy.demoted", "Agent demoted"
    QA_OPENED = "qa.opened", "QA review opened"
    QA_REVIEWED = "qa.reviewed", "QA review decided"
    API_CLIENT_CREATED = "api_client.created", "API client created"
    API_CLIENT_ROTATED = "api_client.rotated", "API client key rotated"
    API_CLIENT_REVOKED = "api_client.revoked", "API client revoked"
    WEBHOOK_SUBSCRIBED = "webhook.subscribed", "Webhook subscription created"
    WEBHOOK_UNSUBSCRIBED = "webhook.unsubscribed", "Webhook subscription removed"
    WEBHOOK_REDELIVERY = "webhook.redelivery", "Webhook redelivery requested"
    WEBHOOK_DEAD_LETTERED = "webhook.dead_lettered", "Webhook delivery dead-lettered"
    LLM_ENDPOINT_CHANGED = "agent.llm_endpoint_changed", "LLM endpoint changed"


class AuditEvent(models.Model):
    """One thing that happened in the organization: who did what, to what, with which data, when.

    Rows are append-only (database triggers refuse UPDATE, DELETE and TRUNCATE); the only change ever allowed is the
    sealer filling ``seal_seq`` and ``hash`` once, which chains the event into the tamper-evident hash chain.
    ``id`` is the insertion order; ``seal_seq`` is the chain order, given at sealing time, so writers never contend
    on a chain head.
    """

    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_id = models.CharField(max_length=128)
    actor_label = models.CharField(max_length=200, blank=True)
    # The vocabulary is AuditAction; it is not declared as database choices, so a new action needs no migration.
    action = models.CharField(max_length=64, db_index=True)
    subject_type = models.CharField(max_length=64)
    subject_id = models.CharField(max_length=64)
    subject_label = models.CharField(max_length=200, blank=True)
    # The case this event belongs to, when it belongs to one: the per-case timeline and dossier read by it.
    case_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    data = models.JSONField(default=dict, encoder=DjangoJSONEncoder, blank=True)
    correlation_id = models.CharField(max_length=64, blank=True)
    seal_seq = models.BigIntegerField(null=True, blank=True, unique=True)
    hash = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [
            # The event browser filters by subject id (optionally with its type) and by actor id or label; the id
            # leads so that each filter alone finds its rows through an index.
            models.Index(fields=["subject_id", "subject_type"], name="audit_subject_id_idx"),
            models.Index(fields=["actor_id", "actor_type"], name="audit_actor_id_idx"),
            models.Index(fields=["actor_label"], name="audit_actor_label_idx"),
            # The sealer's work list: unsealed events in id order, without scanning the sealed millions.
            models.Index(fields=["id"], condition=Q(seal_seq__isnull=True), name="audit_unsealed_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.subject_type}:{self.subject_id}"


class VerificationRun(models.Model):
    """One run of the chain verifier: how far it checked, the head it reached, and whether the chain held.

    The portal's status panel and the API read the latest run; failed runs name the first bad sequence number.
    """

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    checked = models.BigIntegerField(default=0)
    head_seq = models.BigIntegerField(null=True, blank=True)
    head_hash = models.CharField(max_length=64, blank=True, default="")
    first_bad_seq = models.BigIntegerField(null=True, blank=True)
    problem = models.TextField(blank=True, default="")
    digest_seq = models.BigIntegerField(null=True, blank=True, help_text="the digest's head, when checked against one")
    duration_ms = models.FloatField(default=0)

    class Meta:
        ordering = ["-id"]
        get_latest_by = "id"

    def __str__(self) -> str:
        return f"verification #{self.pk}: {'ok' if self.ok else f'broken at {self.first_bad_seq}'}"
