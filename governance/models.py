from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q


class AutonomyLevel(models.TextChoices):
    OFF = "off", "Off (paused)"
    SHADOW = "shadow", "Shadow (a human always decides)"
    SUPERVISED = "supervised", "Supervised (a human approves every proposal)"
    BOUNDED = "bounded", "Bounded (autonomous within limits)"


class AgentPolicy(models.Model):
    """The standing authority of one agent: what it may decide alone. Its terms live in immutable versions;
    ``current_version`` is the one new steps use. A policy either covers every step the agent runs (no workflow
    step named) or is narrowed to one workflow step; when that step runs, its narrowed policy applies instead of the
    agent's general one."""

    agent_key = models.CharField(max_length=100)
    workflow_key = models.CharField(
        max_length=100, blank=True, help_text="With a step key: narrow this policy to one workflow step."
    )
    step_key = models.CharField(max_length=100, blank=True, help_text="Empty: every step the agent runs.")
    name = models.CharField(max_length=200, blank=True)
    current_version = models.ForeignKey(
        "PolicyVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "agent policies"
        constraints = [
            models.UniqueConstraint(
                fields=["agent_key", "workflow_key", "step_key"],
                name="agent_policy_unique_scope",
                violation_error_message="This agent already has a policy for that scope.",
            ),
            models.CheckConstraint(
                condition=Q(workflow_key="", step_key="") | (~Q(workflow_key="") & ~Q(step_key="")),
                name="agent_policy_step_in_workflow",
                violation_error_message="A narrowed policy names both a workflow and one of its steps.",
            ),
        ]

    def __str__(self) -> str:
        label = self.name or self.agent_key
        return f"{label} @ {self.scope}" if self.step_key else label

    @property
    def scope(self) -> str:
        """``workflow/step`` for a narrowed policy, '' for the agent's general one."""
        return policy_scope(self.workflow_key, self.step_key)


def policy_scope(workflow_key: str, step_key: str) -> str:
    return f"{workflow_key}/{step_key}" if step_key else ""


class PolicyVersion(models.Model):
    """One published, never-edited version of an agent's limits. Every verdict records the version it used."""

    policy = models.ForeignKey(AgentPolicy, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    autonomy = models.CharField(max_length=16, choices=AutonomyLevel.choices, default=AutonomyLevel.BOUNDED)
    allowed_actions = models.JSONField(default=list, blank=True, help_text="Empty means every action is allowed.")
    max_amount = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    min_confidence = models.DecimalField(max_digits=4, decimal_places=3, null=True, blank=True)
    daily_amount_budget = models.DecimalField(max_digits=16, decimal_places=2, null=True, blank=True)
    hourly_decision_limit = models.PositiveIntegerField(null=True, blank=True)
    qa_sample_rate = models.DecimalField(max_digits=4, decimal_places=3, default=0)
    rules = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    note = models.TextField(blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "number"],
                name="policy_version_unique",
                violation_error_message="This policy already has a version with that number.",
            ),
            models.CheckConstraint(
                condition=Q(min_confidence__isnull=True) | Q(min_confidence__gte=0, min_confidence__lte=1),
                name="policy_min_confidence_0_1",
            ),
            models.CheckConstraint(
                condition=Q(max_amount__isnull=True) | Q(max_amount__gte=0), name="policy_max_amount_non_negative"
            ),
            models.CheckConstraint(condition=Q(qa_sample_rate__gte=0, qa_sample_rate__lte=1), name="policy_qa_0_1"),
        ]
        ordering = ["policy", "-number"]

    def __str__(self) -> str:
        return f"{self.policy.agent_key} v{self.number}"


class StopScope(models.TextChoices):
    GLOBAL = "global", "Everything"
    WORKFLOW = "workflow", "One workflow"
    AGENT = "agent", "One agent"


class StopSwitch(models.Model):
    """A human's stop order (EU AI Act Art. 14(4)(e)): while engaged, no new step in its scope starts; cases in
    flight park and resume when it is released."""

    scope = models.CharField(max_length=16, choices=StopScope.choices)
    target = models.CharField(max_length=100, blank=True, help_text="Workflow or agent key; empty for global.")
    engaged = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    changed_by = models.CharField(max_length=150, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "target"], name="stop_switch_unique_scope_target"),
        ]
        indexes = [models.Index(fields=["engaged"], name="stop_engaged_idx")]

    def __str__(self) -> str:
        return f"stop {self.scope}:{self.target or '*'} ({'engaged' if self.engaged else 'released'})"


class AgentCostBudget(models.Model):
    """An optional daily ceiling on what one agent may spend on paid calls (a language model's tokens). ``spent``
    counts today's money (UTC day ``day``); when it reaches ``daily_limit`` new work for that agent goes to people
    (escalation reason ``cost_budget_exhausted``) instead of failing."""

    agent_key = models.CharField(max_length=100, unique=True)
    daily_limit = models.DecimalField(max_digits=12, decimal_places=4)
    day = models.DateField(null=True, blank=True)
    spent = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(daily_limit__gte=0), name="cost_budget_limit_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.agent_key}: {self.spent} of {self.daily_limit} on {self.day}"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "UTC day (amount)"
    HOUR = "hour", "UTC hour (decisions)"


class BudgetUsage(models.Model):
    """What an agent has used of one budget in one UTC period: the amount it decided alone in a day, or the number of
    decisions it took alone in an hour. Consumed with a conditional UPDATE (``used + x <= cap``), so concurrent
    workers never overspend; a human approval may go over and is recorded as such."""

    agent_key = models.CharField(max_length=100)
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices)
    period_start = models.DateTimeField()
    used = models.DecimalField(max_digits=18, decimal_places=2, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent_key", "period", "period_start"],
                name="budget_usage_unique_period",
                violation_error_message="This agent already has a usage row for that period.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_key} {self.period} {self.period_start:%Y-%m-%d %H:00}: {self.used}"


class JudgementSource(models.TextChoices):
    SHADOW = "shadow", "Shadow decision"
    SUPERVISED = "supervised", "Supervised approval"
    QA = "qa", "QA review"


class HumanJudgement(models.Model):
    """A human decision about a proposal of an agent, and whether the human agreed with it: the evidence for
    promoting an agent (agreement over its last decisions) and for demoting it (overrides in a rolling window)."""

    agent_key = models.CharField(max_length=100)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    autonomy = models.CharField(max_length=16, blank=True)
    source = models.CharField(max_length=16, choices=JudgementSource.choices)
    case_id = models.BigIntegerField(null=True, blank=True)
    subject = models.CharField(max_length=64, help_text="escalation:<id> or qa:<id>")
    agreed = models.BooleanField()
    proposal = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    decision = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    decided_by = models.CharField(max_length=200)
    decided_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subject"], name="judgement_one_per_subject"),
        ]
        indexes = [models.Index(fields=["agent_key", "decided_at"], name="judgement_agent_time_idx")]

    def __str__(self) -> str:
        return f"{self.agent_key} {self.source} {'agree' if self.agreed else 'override'}"


class QAStatus(models.TextChoices):
    OPEN = "open", "Open"
    AGREED = "agreed", "Agreed"
    DISAGREED = "disagreed", "Disagreed"


class QAReview(models.Model):
    """A post-hoc review of a decision an agent took alone, opened for a sampled share of them (the policy's QA
    sample rate). The case is not held: the review only measures quality, and its outcome counts towards the
    agent's agreement rate."""

    agent_key = models.CharField(max_length=100)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    case_id = models.BigIntegerField()
    step_key = models.CharField(max_length=100)
    step_run_id = models.BigIntegerField(null=True, blank=True)
    proposal = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=16, choices=QAStatus.choices, default=QAStatus.OPEN)
    note = models.TextField(blank=True)
    reviewed_by = models.CharField(max_length=200, blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["case_id", "step_key"], name="qa_review_one_per_case_step"),
        ]
        indexes = [models.Index(fields=["status", "agent_key"], name="qa_status_agent_idx")]

    def __str__(self) -> str:
        return f"QA review {self.pk} of {self.agent_key} on case {self.case_id}"
