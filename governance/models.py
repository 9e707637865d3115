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
    ``current_version`` is the one new steps use."""

    agent_key = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    current_version = models.ForeignKey(
        "PolicyVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "agent policies"

    def __str__(self) -> str:
        return self.name or self.agent_key


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
