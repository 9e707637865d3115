"""Changes to governance: publishing policy versions and flipping stop switches, each audited."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from governance.errors import GovernanceError
from governance.models import AgentPolicy, AutonomyLevel, PolicyVersion, StopScope, StopSwitch
from governance.signals import stop_released

POLICY_FIELDS = (
    "autonomy",
    "allowed_actions",
    "max_amount",
    "min_confidence",
    "daily_amount_budget",
    "hourly_decision_limit",
    "qa_sample_rate",
    "rules",
)


def _version_terms(version: PolicyVersion | None) -> dict:
    if version is None:
        return {}
    return {f: (str(v) if isinstance(v := getattr(version, f), Decimal) else v) for f in POLICY_FIELDS}


def policy_publish(
    *,
    agent_key: str,
    actor: Actor,
    name: str = "",
    note: str = "",
    autonomy: str = AutonomyLevel.BOUNDED,
    allowed_actions: list[str] | None = None,
    max_amount: Decimal | None = None,
    min_confidence: Decimal | None = None,
    daily_amount_budget: Decimal | None = None,
    hourly_decision_limit: int | None = None,
    qa_sample_rate: Decimal = Decimal(0),
    rules: list[dict] | None = None,
) -> PolicyVersion:
    """Publish a new immutable version of ``agent_key``'s policy and make it current; steps already deciding keep
    the version they started with."""
    if autonomy not in AutonomyLevel.values:
        raise GovernanceError(f"unknown autonomy level {autonomy!r}", fields={"autonomy": "unknown level"})
    version = PolicyVersion(
        number=0,
        autonomy=autonomy,
        allowed_actions=list(allowed_actions or []),
        max_amount=max_amount,
        min_confidence=min_confidence,
        daily_amount_budget=daily_amount_budget,
        hourly_decision_limit=hourly_decision_limit,
        qa_sample_rate=qa_sample_rate,
        rules=list(rules or []),
        note=note,
        created_by=actor.label,
    )
    with transaction.atomic():
        policy, _ = AgentPolicy.objects.select_for_update().get_or_create(agent_key=agent_key)
        if name and policy.name != name:
            policy.name = name
        previous = policy.current_version
        version.policy = policy
        version.number = (policy.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        version.full_clean(exclude=["policy"])
        version.save()
        policy.current_version = version
        policy.save()
        audit_record(
            actor=actor,
            action=AuditAction.POLICY_CHANGED,
            subject=policy,
            data={
                "version": version.number,
                "before": _version_terms(previous),
                "after": _version_terms(version),
                "note": note,
            },
        )
    return version


def _switch(scope: str, target: str) -> StopSwitch:
    if scope not in StopScope.values:
        raise GovernanceError(f"unknown stop scope {scope!r}", fields={"scope": "unknown scope"})
    if scope == StopScope.GLOBAL:
        target = ""
    elif not target:
        raise GovernanceError("a workflow or agent stop needs a target key", fields={"target": "required"})
    switch, _ = StopSwitch.objects.select_for_update().get_or_create(scope=scope, target=target)
    return switch


def stop_engage(*, scope: str, target: str = "", reason: str, actor: Actor) -> StopSwitch:
    """Engage a stop switch: no new step in its scope starts; cases in flight park with reason ``stopped``."""
    if not reason or not reason.strip():
        raise GovernanceError("a reason is required to engage a stop switch", fields={"reason": "required"})
    with transaction.atomic():
        switch = _switch(scope, target)
        switch.engaged, switch.reason, switch.changed_by, switch.changed_at = True, reason, actor.label, timezone.now()
        switch.save()
        audit_record(
            actor=actor,
            action=AuditAction.STOP_ENGAGED,
            subject=switch,
            data={"scope": switch.scope, "target": switch.target, "reason": reason},
        )
    return switch


def stop_release(*, scope: str, target: str = "", reason: str, actor: Actor) -> StopSwitch:
    """Release a stop switch; the cases it parked resume by themselves."""
    if not reason or not reason.strip():
        raise GovernanceError("a reason is required to release a stop switch", fields={"reason": "required"})
    with transaction.atomic():
        switch = _switch(scope, target)
        switch.engaged, switch.reason, switch.changed_by, switch.changed_at = False, reason, actor.label, timezone.now()
        switch.save()
        audit_record(
            actor=actor,
            action=AuditAction.STOP_RELEASED,
            subject=switch,
            data={"scope": switch.scope, "target": switch.target, "reason": reason},
        )
        transaction.on_commit(lambda: stop_released.send(sender=StopSwitch, scope=switch.scope, target=switch.target))
    return switch


# --- per-agent daily cost budgets ----------------------------------------------------------------------------------


def cost_budget_set(*, agent_key: str, daily_limit: Decimal | None, actor: Actor):
    """Set (or, with ``None``, remove) an agent's daily cost ceiling; audited."""
    from governance.models import AgentCostBudget

    if daily_limit is not None:
        daily_limit = Decimal(str(daily_limit))
        if not daily_limit.is_finite() or daily_limit < 0:
            raise GovernanceError("a daily cost limit must be zero or more", fields={"daily_limit": "must be >= 0"})
    with transaction.atomic():
        before = AgentCostBudget.objects.select_for_update().filter(agent_key=agent_key).first()
        if daily_limit is None:
            AgentCostBudget.objects.filter(agent_key=agent_key).delete()
            budget = None
        else:
            budget, _ = AgentCostBudget.objects.update_or_create(
                agent_key=agent_key, defaults={"daily_limit": daily_limit}
            )
        audit_record(
            actor=actor,
            action=AuditAction.COST_BUDGET_CHANGED,
            subject_type="governance.agentcostbudget",
            subject_id=agent_key,
            subject_label=f"cost budget of {agent_key}",
            data={
                "before": str(before.daily_limit) if before else None,
                "after": str(daily_limit) if daily_limit is not None else None,
            },
        )
    return budget


def cost_budget_consume(*, agent_key: str, cost: Decimal, today=None) -> None:
    """Count money an agent just spent against its budget (if it has one). Two conditional UPDATEs, no lock held
    across a call: the first moves a budget still on an earlier day to today, the second adds to today's."""
    from django.db.models import F

    from governance.models import AgentCostBudget

    cost = Decimal(str(cost or 0))
    if cost <= 0:
        return
    today = today or timezone.now().date()
    rolled = (
        AgentCostBudget.objects.filter(agent_key=agent_key)
        .exclude(day=today)
        .update(day=today, spent=cost, updated_at=timezone.now())
    )
    if not rolled:
        AgentCostBudget.objects.filter(agent_key=agent_key, day=today).update(
            spent=F("spent") + cost, updated_at=timezone.now()
        )
