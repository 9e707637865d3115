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
        # waiting -> waiting, completed/rejected -> waiting: an effect of the case (a payment, a letter) failed for
        # good, so the case waits on an escalation again even if it was parked or had finished
        # (operations.services.effect_escalate); the supervisor's decision restores or ends it
        CaseStatus.WAITING: {
            CaseStatus.RUNNING,
            CaseStatus.REJECTED,
            CaseStatus.CANCELLED,
            CaseStatus.COMPLETED,
            CaseStatus.WAITING,
        },
        CaseStatus.FAILED: {CaseStatus.RUNNING, CaseStatus.CANCELLED},
        CaseStatus.COMPLETED: {CaseStatus.WAITING},
        CaseStatus.REJECTED: {CaseStatus.WAITING},
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
    # the API client that submitted the case: it alone (of all clients) may see it
    submitted_by_client = models.ForeignKey(
        "ApiClient", null=True, blank=True, on_delete=models.PROTECT, related_name="cases"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "reference"],
                name="case_workflow_reference_unique",
                violation_error_message="A case with this reference already exists for this workflow.",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="case_status_updated_idx"),
            models.Index(fields=["finished_at"], name="case_finished_idx"),  # portal dashboard: cases out
            # portal case search by reference prefix (the pattern opclass lets PostgreSQL use it for LIKE 'x%')
            models.Index(fields=["reference"], name="case_reference_prefix_idx", opclasses=["varchar_pattern_ops"]),
            # portal dashboard: the workflow map counts open cases per step (an index-only scan of the open ones)
            models.Index(
                fields=["current_step", "status", "wait_reason"],
                condition=Q(status__in=["running", "waiting"]),
                name="case_open_step_idx",
            ),
        ]

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
    # language-model agents: what the call cost (empty for other kinds)
    llm_model = models.CharField(max_length=100, blank=True)
    prompt_version = models.CharField(max_length=50, blank=True)
    tokens_in = models.PositiveIntegerField(null=True, blank=True)
    tokens_out = models.PositiveIntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)

    class Meta:
        # (case, step, attempt) is not unique: a step returned to its agent by a supervisor starts a new round of
        # attempts, numbered from 1 again.
        indexes = [
            models.Index(fields=["case", "step"], name="steprun_case_step_idx"),
            models.Index(fields=["started_at"], name="steprun_started_idx"),  # portal dashboard: latency per step
        ]
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
    claimed_by_client = models.ForeignKey(
        "ApiClient", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolution_note = models.TextField(blank=True)
    resolution_data = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    resolved_by = models.CharField(max_length=200, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # --- portal: claiming, reason codes, four-eyes, retry, SLA breaches -------------------------------------------
    claimed_at = models.DateTimeField(null=True, blank=True)
    reason_code = models.CharField(max_length=64, blank=True)
    # four-eyes: the first approval of an amount above the threshold waits here for a second, different person
    pending_approval = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    pending_approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # a "retry" resolution stays visible until the step's next run really succeeds (the engine clears it)
    retry_pending = models.BooleanField(default=False)
    sla_breached_at = models.DateTimeField(null=True, blank=True)
    sla_reassigned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["case"],
                condition=Q(status="open"),
                name="escalation_one_open_per_case",
                violation_error_message="This case already has an open escalation.",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "queue", "sla_deadline"], name="escalation_queue_idx"),
            # portal: the open queue sorted by deadline, "claim next" by urgency, retries still pending, similar cases
            models.Index(fields=["sla_deadline", "id"], condition=Q(status="open"), name="escalation_open_sla_idx"),
            models.Index(
                fields=["priority", "sla_deadline", "id"],
                condition=Q(status="open", claimed_by__isnull=True),
                name="escalation_unclaimed_idx",
            ),
            models.Index(fields=["case"], condition=Q(retry_pending=True), name="escalation_retry_pending_idx"),
            # similar past escalations, newest first: walks the step's and reason's resolved ones backwards in time
            models.Index(
                fields=["step", "reason", "resolved_at", "id"],
                condition=Q(status="resolved"),
                name="escalation_similar_recent_idx",
            ),
            # portal dashboard: queue depths, and the periods it aggregates (raised, resolved, breached)
            models.Index(fields=["queue", "claimed_by"], condition=Q(status="open"), name="escalation_open_queue_idx"),
            models.Index(fields=["created_at"], name="escalation_created_idx"),
            models.Index(
                fields=["resolved_at"], condition=Q(resolved_at__isnull=False), name="escalation_resolved_idx"
            ),
            models.Index(
                fields=["sla_breached_at"], condition=Q(sla_breached_at__isnull=False), name="escalation_breached_idx"
            ),
        ]
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
    CANCELLED = "cancelled", "Cancelled (not delivered)"


# the escalation reason of an effect that failed for good (its retry window ran out, or the outside system refused it)
EFFECT_FAILED_REASON = "effect_failed"


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
    attempts = models.PositiveIntegerField(default=0)  # in the current retry window
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # when the sweeper may hand a pending entry to a worker again (backoff after a failed attempt); null: now
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # failed for good (the retry window ran out, or the outside system refused it): a person must look, through the
    # escalation opened for it (``escalation``); a supervisor's retry hands the same entry back, with the same key
    needs_attention = models.BooleanField(default=False, db_index=True)
    escalation = models.ForeignKey(Escalation, null=True, blank=True, on_delete=models.PROTECT, related_name="effects")
    # the retry window counts from here (``created_at`` when unset); a supervisor's retry starts a new window
    retry_from = models.DateTimeField(null=True, blank=True)

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


# --- agents: kinds, versions and their rollout, rule agents, trained models ------------------------------------------


class AgentKind(models.TextChoices):
    CODE = "code", "Code (a registered Python function)"
    RULE = "rule", "Rules (CEL expressions configured in the admin)"
    ML = "ml", "Machine learning (a trained model)"
    LLM = "llm", "Language model (a chat-completions endpoint)"


class AgentVersionStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    REPLAYING = "replaying", "Replaying"
    CANARY = "canary", "Canary"
    LIVE = "live", "Live"
    RETIRED = "retired", "Retired"


class RuleAgentVersion(models.Model):
    """An agent defined without a deploy: an ordered list of CEL rules over the case (``payload``, ``context``,
    ``case``); the first rule whose ``when`` holds gives the outcome, action, amount and confidence. A version never
    changes once it left draft; it takes traffic only through the rollout (``AgentVersion``)."""

    agent_key = models.CharField(max_length=100)
    version = models.CharField(max_length=50)
    description = models.TextField(blank=True)
    # [{"id", "when", "outcome", "action", "amount", "confidence", "rationale"}], in order
    rules = models.JSONField(default=list, encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=16, choices=AgentVersionStatus.choices, default=AgentVersionStatus.DRAFT)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent_key", "version"],
                name="rule_agent_version_unique",
                violation_error_message="This rule agent already has a version with that name.",
            ),
        ]
        ordering = ["agent_key", "-created_at"]

    def __str__(self) -> str:
        return f"{self.agent_key} {self.version} (rules)"


class AgentVersion(models.Model):
    """One version of an agent in the rollout: what kind it is, where its implementation comes from (``source``: a
    registered agent key, a rule agent version, or for ML ``model_key@artifact_version`` to pin the model), and
    whether it takes traffic — all of it (live),
    a share of new cases (canary), or none. Replay results and live agreement are shown beside the live version."""

    agent_key = models.CharField(max_length=100)
    version = models.CharField(max_length=50)
    kind = models.CharField(max_length=8, choices=AgentKind.choices, default=AgentKind.CODE)
    source = models.CharField(max_length=150, blank=True, help_text="Registered agent key or model key; empty: same.")
    status = models.CharField(max_length=16, choices=AgentVersionStatus.choices, default=AgentVersionStatus.DRAFT)
    canary_share = models.DecimalField(max_digits=4, decimal_places=3, default=0)
    description = models.TextField(blank=True)
    replay = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent_key", "version"],
                name="agent_version_unique",
                violation_error_message="This agent already has a version with that name.",
            ),
            models.UniqueConstraint(
                fields=["agent_key"],
                condition=Q(status="live"),
                name="agent_version_one_live",
                violation_error_message="An agent has at most one live version.",
            ),
            models.UniqueConstraint(
                fields=["agent_key"],
                condition=Q(status="canary"),
                name="agent_version_one_canary",
                violation_error_message="An agent has at most one canary version.",
            ),
            models.CheckConstraint(condition=Q(canary_share__gte=0, canary_share__lte=1), name="agent_canary_0_1"),
        ]
        ordering = ["agent_key", "-created_at"]

    def __str__(self) -> str:
        return f"{self.agent_key} {self.version} ({self.kind}, {self.status})"


class ModelArtifact(models.Model):
    """A trained model of an ML agent: the file it was saved to, the digest of the training set, the holdout
    metrics next to a naive baseline's, and when it was trained. The newest artifact of a key serves that key."""

    agent_key = models.CharField(max_length=100)
    version = models.CharField(max_length=50)
    path = models.CharField(max_length=500)
    training_digest = models.CharField(max_length=64)
    training_rows = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent_key", "version"],
                name="model_artifact_unique",
                violation_error_message="This model already has an artifact with that version.",
            ),
        ]
        ordering = ["agent_key", "-created_at"]

    def __str__(self) -> str:
        return f"{self.agent_key} model {self.version}"


# --- REST API: clients, idempotency, webhooks -------------------------------------------------------------------------


class ApiScope(models.TextChoices):
    CASES_WRITE = "cases:write", "Submit and cancel cases"
    CASES_READ = "cases:read", "Read its cases"
    ESCALATIONS_READ = "escalations:read", "Read escalations of its queues"
    ESCALATIONS_RESOLVE = "escalations:resolve", "Claim and resolve escalations of its queues"
    GOVERNANCE_READ = "governance:read", "Read agents, policies and stop switches"
    GOVERNANCE_STOP = "governance:stop", "Engage and release stop switches"
    AUDIT_READ = "audit:read", "Read the audit trail"
    METRICS_READ = "metrics:read", "Read metrics"
    WEBHOOKS_MANAGE = "webhooks:manage", "Manage its webhook subscriptions and deliveries"


class ApiClient(models.Model):
    """An outside system (a claims intake, a CRM, a BI tool) that calls the API with a key. Only a hash of the key
    is stored; the key is shown once, when created or rotated. Its scopes say what it may do, its queues which
    escalations it may see and act on; the cases it submitted are the only cases it sees."""

    name = models.CharField(max_length=100, unique=True)
    key_prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list, blank=True)
    queues = models.JSONField(default=list, blank=True, help_text="Escalation queues this client may act on.")
    throttle_rate = models.CharField(
        max_length=32, blank=True, help_text="Requests per period, e.g. 600/min; empty: the default."
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])


class IdempotencyStatus(models.TextChoices):
    IN_FLIGHT = "in_flight", "In flight"
    DONE = "done", "Done"


class IdempotencyRecord(models.Model):
    """The first answer to a client's request under one ``Idempotency-Key``: a retry with the same key and body gets
    the same answer and creates nothing. Kept at least 24 hours (a schedule deletes those older than 48)."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=IdempotencyStatus.choices, default=IdempotencyStatus.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    locked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["client", "key"],
                name="idempotency_client_key_unique",
                violation_error_message="This idempotency key was already used by this client.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.client_id}:{self.key}"


class WebhookEvent(models.TextChoices):
    CASE_COMPLETED = "case.completed", "Case completed"
    CASE_REJECTED = "case.rejected", "Case rejected"
    ESCALATION_OPENED = "escalation.opened", "Escalation opened"
    ESCALATION_RESOLVED = "escalation.resolved", "Escalation resolved"


class WebhookSubscription(models.Model):
    """A client's standing request to be told, by a signed HTTP POST to ``url``, when one of ``events`` happens to
    something it may see. ``secret`` signs the deliveries (it must be readable to sign: it is shown to the client
    once, at creation)."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="webhook_subscriptions")
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list)
    secret = models.CharField(max_length=100, editable=False)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.client} -> {self.url}"


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    DEAD = "dead", "Dead-lettered"


class WebhookDelivery(models.Model):
    """One event owed to one subscription, written in the same transaction as the change it reports (an outbox).
    Retried with exponential backoff over a bounded window, then dead-lettered; ``log`` keeps every attempt's
    status code or error. The event id is stable across attempts, so receivers can deduplicate."""

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=64, choices=WebhookEvent.choices)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    status = models.CharField(
        max_length=16, choices=WebhookDeliveryStatus.choices, default=WebhookDeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    log = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_lettered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["subscription", "event_id"], name="webhook_delivery_event_unique"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due_idx")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.subscription_id}"


class LLMEndpoint(models.Model):
    """The OpenAI-compatible chat-completions endpoint that LLM agents call, configured by a governance admin in the
    admin (one row). Empty fields fall back to the environment (``SELFOPS_LLM_*``); inactive: the environment only.
    The key is write-only: the admin never shows it back, the audit trail records only that it changed."""

    active = models.BooleanField(default=True)
    base_url = models.URLField(max_length=300, blank=True)
    model = models.CharField(max_length=100, blank=True)
    api_key = models.CharField(max_length=300, blank=True)
    timeout = models.FloatField(null=True, blank=True, help_text="Seconds per call (0.5 to 60).")
    price_in = models.DecimalField(max_digits=10, decimal_places=6, null=True, blank=True)
    price_out = models.DecimalField(max_digits=10, decimal_places=6, null=True, blank=True)
    updated_by = models.CharField(max_length=150, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "LLM endpoint"
        constraints = [
            models.CheckConstraint(
                condition=Q(timeout__isnull=True) | Q(timeout__gte=0.5, timeout__lte=60), name="llm_timeout_range"
            ),
            models.CheckConstraint(
                condition=(Q(price_in__isnull=True) | Q(price_in__gte=0))
                & (Q(price_out__isnull=True) | Q(price_out__gte=0)),
                name="llm_prices_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model or '(model from environment)'} at {self.base_url or '(URL from environment)'}"


class DashboardRollup(models.Model):
    """The dashboard's aggregates of one closed hour (of today) or day: counts, sums and fixed histograms that add up
    across periods (``operations.metrics.period_parts``). Written once per period by a schedule or on demand, so a
    dashboard request sums at most 30 stored days and today's hours instead of scanning a month of cases."""

    HOUR, DAY = "hour", "day"

    period = models.CharField(max_length=4, choices=[(HOUR, "Hour"), (DAY, "Day")])
    start = models.DateTimeField()
    parts = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["period", "start"], name="dashboard_rollup_period_unique")]
        indexes = [models.Index(fields=["start"], name="dashboard_rollup_start_idx")]

    def __str__(self) -> str:
        return f"{self.period} {self.start:%Y-%m-%d %H:%M}"
