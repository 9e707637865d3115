from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q

from operations.errors import TransitionNotAllowed

TERMINAL_COMPLETE = "@complete"
TERMINAL_REJECT = "@reject"


class Transitions:
    """Declared status transitions (source -> allowed targets); a refused one raises a domain error saying why."""

    allowed: dict[str, set[str]] = {}

    @classmethod
    def check(cls, kind: str, source: str, target: str) -> None:
        if target not in cls.allowed.get(source, set()):
            raise TransitionNotAllowed(f"a {kind} cannot go from '{source}' to '{target}'")


class WorkflowStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


class Workflow(models.Model):
    """One version of a business process: its payload schema and its steps. A case is pinned to the version it was
    submitted under and never changes it; a newer version of the same key serves new cases."""

    key = models.SlugField(max_length=100)
    version = models.PositiveIntegerField(default=1)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    payload_schema = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=WorkflowStatus.choices, default=WorkflowStatus.ACTIVE)
    first_step = models.ForeignKey("Step", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key", "version"],
                name="workflow_key_version_unique",
                violation_error_message="This workflow version already exists.",
            ),
        ]
        ordering = ["key", "-version"]

    def __str__(self) -> str:
        return f"{self.name} (v{self.version})"


class StepEffect(models.TextChoices):
    NONE = "none", "None"
    PAYMENT = "payment", "Payment"
    MESSAGE = "message", "Message"


class Step(models.Model):
    """One step of a workflow, run by an agent. ``transitions`` maps each outcome the agent may propose to the next
    step's key, or to ``@complete`` / ``@reject`` which end the case."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="steps")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    position = models.PositiveIntegerField(default=0)
    agent_key = models.CharField(max_length=100)
    transitions = models.JSONField(default=dict)
    # the outcome applied when a supervisor rejects an escalated proposal of this step; empty: the case is rejected
    reject_outcome = models.CharField(max_length=100, blank=True)
    effect = models.CharField(max_length=16, choices=StepEffect.choices, default=StepEffect.NONE)
    sla_seconds = models.PositiveIntegerField(null=True, blank=True)
    escalation_queue = models.CharField(max_length=150, default="Claims handlers")
    # queue per proposed action, e.g. {"refer": "Special investigations"}
    action_queues = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "key"],
                name="step_workflow_key_unique",
                violation_error_message="This workflow already has a step with that key.",
            ),
        ]
        ordering = ["workflow", "position"]

    def __str__(self) -> str:
        return f"{self.workflow.key}.{self.key}"


class CaseStatus(models.TextChoices):
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    COMPLETED = "completed", "Completed"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class CaseTransitions(Transitions):
    allowed = {
        CaseStatus.RUNNING: {
            CaseStatus.RUNNING,
            CaseStatus.WAITING,
            CaseStatus.COMPLETED,
            CaseStatus.REJECTED,
            CaseStatus.FAILED,
            CaseStatus.CANCELLED,
        },
        CaseStatus.WAITING: {CaseStatus.RUNNING, CaseStatus.REJECTED, CaseStatus.CANCELLED, CaseStatus.COMPLETED},
        CaseStatus.FAILED: {CaseStatus.RUNNING, CaseStatus.CANCELLED},
    }


class WaitReason(models.TextChoices):
    NONE = "", "—"
    ESCALATION = "escalation", "Waiting on a human decision"
    STOPPED = "stopped", "Parked by a stop switch"
    AGENT_OFF = "agent_off", "Agent switched off"


class Case(models.Model):
    """One piece of work (an insurance claim, say) going through a pinned workflow version. ``payload`` is what was
    submitted, ``context`` what the steps have added since. While a worker advances it, it holds a lease; a lease
    that expires means the worker died, and the attempt counts."""

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="cases")
    reference = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    context = models.JSONField(default=dict, encoder=DjangoJSONEncoder, blank=True)
    status = models.CharField(max_length=16, choices=CaseStatus.choices, default=CaseStatus.RUNNING)
    wait_reason = models.CharField(max_length=16, choices=WaitReason.choices, default="", blank=True)
    current_step = models.ForeignKey(Step, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # attempts started on current_step; set before the agent runs, so a worker that dies still leaves it counted
    step_attempt = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    submitted_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "reference"],
                name="case_workflow_reference_unique",
                violation_error_message="A case with this reference already exists for this workflow.",
            ),
        ]
        indexes = [models.Index(fields=["status", "updated_at"], name="case_status_updated_idx")]

    def __str__(self) -> str:
        return self.reference

    def transition(self, target: str) -> None:
        CaseTransitions.check("case", self.status, target)
        self.status = target

    @property
    def is_open(self) -> bool:
        return self.status in (CaseStatus.RUNNING, CaseStatus.WAITING)


class StepRunStatus(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    ESCALATED = "escalated", "Escalated"
    FAILED = "failed", "Failed"
    LOST = "lost", "Lost (worker died)"


class StepRun(models.Model):
    """One attempt of one step on one case: what the agent proposed, what governance said, how long it took, and the
    error if it failed."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="step_runs")
    step = models.ForeignKey(Step, on_delete=models.PROTECT, related_name="+")
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=StepRunStatus.choices)
    agent_key = models.CharField(max_length=100)
    agent_version = models.CharField(max_length=50, blank=True)
    proposal = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    verdict = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    duration_ms = models.FloatField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        # (case, step, attempt) is not unique: a step returned to its agent by a supervisor starts a new round of
        # attempts, numbered from 1 again.
        indexes = [models.Index(fields=["case", "step"], name="steprun_case_step_idx")]
        ordering = ["case", "id"]

    def __str__(self) -> str:
        return f"{self.case} {self.step.key} #{self.attempt} {self.status}"


class EscalationStatus(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"
    CANCELLED = "cancelled", "Cancelled"


class Resolution(models.TextChoices):
    APPROVE = "approve", "Approve"
    AMEND = "amend", "Amend and approve"
    REJECT = "reject", "Reject"
    RETRY = "retry", "Return to the agent (retry)"
    CANCEL_CASE = "cancel_case", "Cancel the case"


class EscalationTransitions(Transitions):
    allowed = {EscalationStatus.OPEN: {EscalationStatus.RESOLVED, EscalationStatus.CANCELLED}}


class Escalation(models.Model):
    """A decision the agent could not take alone: its proposal, every reason governance gave, the amount at stake,
    the queue (a group of people) that must decide, and, once decided, who decided what and why."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="escalations")
    step_run = models.ForeignKey(StepRun, null=True, blank=True, on_delete=models.PROTECT, related_name="escalations")
    step = models.ForeignKey(Step, on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=64, db_index=True)
    reasons = models.JSONField(default=list, encoder=DjangoJSONEncoder)
    proposal = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    amount = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    queue = models.CharField(max_length=150, db_index=True)
    priority = models.PositiveSmallIntegerField(default=2)  # 1 high, 2 normal, 3 low
    status = models.CharField(max_length=16, choices=EscalationStatus.choices, default=EscalationStatus.OPEN)
    sla_deadline = models.DateTimeField(null=True, blank=True)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolution_note = models.TextField(blank=True)
    resolution_data = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    resolved_by = models.CharField(max_length=200, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["case"],
                condition=Q(status="open"),
                name="escalation_one_open_per_case",
                violation_error_message="This case already has an open escalation.",
            ),
        ]
        indexes = [models.Index(fields=["status", "queue", "sla_deadline"], name="escalation_queue_idx")]
        ordering = ["sla_deadline", "id"]

    def __str__(self) -> str:
        return f"Escalation {self.pk} on {self.case} ({self.reason})"

    def transition(self, target: str) -> None:
        EscalationTransitions.check("escalation", self.status, target)
        self.status = target


class OutboxKind(models.TextChoices):
    PAYMENT = "payment", "Payment"
    MESSAGE = "message", "Message"


class OutboxStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class OutboxEntry(models.Model):
    """A side effect owed to the outside world (a payment, a letter), written in the same transaction as the step
    that decided it. The idempotency key comes from (case, step) — never from the attempt — so a step that runs
    twice owes its effect once. Delivered payments are the payment ledger."""

    idempotency_key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=OutboxKind.choices)
    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="outbox")
    step_key = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=16, choices=OutboxStatus.choices, default=OutboxStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # when the sweeper may hand a pending entry to a worker again (backoff after a failed attempt); null: now
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # the retry window ran out: a person must look (the case has usually moved on, so this is not an escalation)
    needs_attention = models.BooleanField(default=False, db_index=True)

    class Meta:
        verbose_name_plural = "outbox entries"
        indexes = [models.Index(fields=["status", "created_at"], name="outbox_status_idx")]

    def __str__(self) -> str:
        return self.idempotency_key


class ReferenceRecord(models.Model):
    """Reference data the agents consult (policies, policyholders, known document hashes…), by namespace and key.
    Workflow packs load it; the engine knows nothing of what is inside."""

    namespace = models.CharField(max_length=64)
    key = models.CharField(max_length=200)
    data = models.JSONField(default=dict, encoder=DjangoJSONEncoder)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "key"], name="reference_namespace_key_unique")]

    def __str__(self) -> str:
        return f"{self.namespace}:{self.key}"
