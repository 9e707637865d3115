"""Reads of governance state that the engine and the portal ask for."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from governance.evaluation import PolicySnapshot
from governance.models import (
    AgentPolicy,
    AutonomyLevel,
    BudgetPeriod,
    BudgetUsage,
    HumanJudgement,
    PolicyVersion,
    QAReview,
    StopScope,
    StopSwitch,
)

_snapshots: dict[int, PolicySnapshot] = {}


def policy_for_agent(agent_key: str, *, workflow_key: str = "", step_key: str = "") -> PolicySnapshot | None:
    """The policy that applies to ``agent_key`` at a workflow step: the one narrowed to that step if there is one,
    else the agent's general policy (without a step: the general policy). One small query; the snapshot itself is
    cached per process by version id, and versions are immutable, so a published change is seen by the next step."""
    scopes = Q(workflow_key="", step_key="")
    if step_key:
        scopes |= Q(workflow_key=workflow_key, step_key=step_key)
    current = dict(
        AgentPolicy.objects.filter(scopes, agent_key=agent_key, current_version__isnull=False).values_list(
            "step_key", "current_version_id"
        )
    )
    version_id = current.get(step_key) if step_key and step_key in current else current.get("")
    return _snapshot(version_id) if version_id is not None else None


def _snapshot(version_id: int) -> PolicySnapshot:
    snapshot = _snapshots.get(version_id)
    if snapshot is None:
        snapshot = PolicySnapshot.from_version(PolicyVersion.objects.select_related("policy").get(pk=version_id))
        _snapshots[version_id] = snapshot
    return snapshot


def engaged_stops(*, workflow_key: str, agent_key: str) -> list[StopSwitch]:
    """Engaged stop switches that cover a step of ``workflow_key`` run by ``agent_key``; read from the database every
    time (never a long-lived cache), so a stop takes effect before the next step starts. The query is the cheapest
    one that can answer (engaged switches are few, usually none): the scope is matched here, not in SQL."""
    with connection.cursor() as cursor:  # the hot path: one indexed probe, no ORM query building
        cursor.execute(f"SELECT 1 FROM {StopSwitch._meta.db_table} WHERE engaged LIMIT 1")  # noqa: S608  # nosec B608
        if cursor.fetchone() is None:
            return []
    return [
        s
        for s in StopSwitch.objects.filter(engaged=True)
        if s.scope == StopScope.GLOBAL
        or (s.scope == StopScope.WORKFLOW and s.target == workflow_key)
        or (s.scope == StopScope.AGENT and s.target == agent_key)
    ]


def clear_caches() -> None:
    """Forget cached policy snapshots (tests, whose rolled-back ids can be reused)."""
    _snapshots.clear()


class CurrentPolicies:
    """Every current policy, read in one query (snapshots cached per process by immutable version id). ``get`` gives
    the policy that applies at a workflow step: the one narrowed to that step, else the agent's general one."""

    def __init__(self, snapshots: dict[tuple[str, str, str], PolicySnapshot]):
        self._by_scope = snapshots

    def get(self, agent_key: str, workflow_key: str = "", step_key: str = "") -> PolicySnapshot | None:
        if step_key and (narrowed := self._by_scope.get((agent_key, workflow_key, step_key))) is not None:
            return narrowed
        return self._by_scope.get((agent_key, "", ""))


def current_policies() -> CurrentPolicies:
    """Every current policy in one query (see ``CurrentPolicies``)."""
    current = {
        (agent, workflow, step): vid
        for agent, workflow, step, vid in AgentPolicy.objects.filter(current_version__isnull=False).values_list(
            "agent_key", "workflow_key", "step_key", "current_version_id"
        )
    }
    missing = [vid for vid in current.values() if vid not in _snapshots]
    if missing:
        for version in PolicyVersion.objects.select_related("policy").filter(pk__in=missing):
            _snapshots[version.pk] = PolicySnapshot.from_version(version)
    return CurrentPolicies({scope: _snapshots[vid] for scope, vid in current.items()})


def general_policy(agent_key: str):
    """The agent's general policy row (not narrowed to a step), as a queryset to chain on."""
    return AgentPolicy.objects.filter(agent_key=agent_key, workflow_key="", step_key="")


def cost_budget_exhausted(agent_key: str, *, today=None) -> dict | None:
    """The agent's budget when today's spending has reached its daily limit, else None (also without a budget)."""
    from django.utils import timezone

    from governance.models import AgentCostBudget

    today = today or timezone.now().date()
    budget = AgentCostBudget.objects.filter(agent_key=agent_key).values("daily_limit", "spent", "day").first()
    if budget is None or budget["day"] != today:
        return None if budget is None or budget["daily_limit"] > 0 else {**budget, "spent": 0}
    return budget if budget["spent"] >= budget["daily_limit"] else None


def wilson_interval(agreed: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval for ``agreed`` successes out of ``n`` (0..1 each); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = agreed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def agent_standing(agent_key: str) -> dict:
    """How far humans agree with the agent at its current autonomy level: agreement over its last N judgements at
    that level, the Wilson interval, and whether it is eligible for promotion (and why not)."""
    conf = settings.SELFOPS_GOVERNANCE
    autonomy = general_policy(agent_key).values_list("current_version__autonomy", flat=True).first()
    recent = list(
        HumanJudgement.objects.filter(agent_key=agent_key, autonomy=autonomy or "")
        .order_by("-decided_at", "-id")
        .values_list("agreed", flat=True)[: conf["AGREEMENT_WINDOW"]]
    )
    n, agreed = len(recent), sum(recent)
    low, high = wilson_interval(agreed, n, conf["WILSON_Z"])
    if autonomy not in (AutonomyLevel.SHADOW, AutonomyLevel.SUPERVISED):
        why = f"only shadow and supervised agents are promoted (this one is {autonomy or 'without policy'})"
    elif n < conf["PROMOTE_MIN_DECISIONS"]:
        why = f"{n} human decisions so far, {conf['PROMOTE_MIN_DECISIONS']} needed"
    elif low < conf["PROMOTE_AGREEMENT"]:
        why = f"agreement lower bound {low:.0%} is below {conf['PROMOTE_AGREEMENT']:.0%}"
    else:
        why = ""
    return {
        "autonomy": autonomy,
        "decisions": n,
        "agreed": agreed,
        "rate": agreed / n if n else None,
        "wilson_low": low,
        "wilson_high": high,
        "eligible": autonomy in (AutonomyLevel.SHADOW, AutonomyLevel.SUPERVISED) and not why,
        "why": why,
    }


def override_rate(agent_key: str, *, now: datetime | None = None, since: datetime | None = None) -> dict:
    """Share of the agent's judgements in the rolling window (and since ``since``) where a human overrode it."""
    now = now or timezone.now()
    start = now - timedelta(hours=settings.SELFOPS_GOVERNANCE["DEMOTE_WINDOW_HOURS"])
    if since is not None and since > start:
        start = since
    rows = HumanJudgement.objects.filter(agent_key=agent_key, decided_at__gte=start, decided_at__lte=now)
    stats = rows.aggregate(n=Count("id"), overrides=Count("id", filter=Q(agreed=False)))
    n = stats["n"] or 0
    return {"decisions": n, "overrides": stats["overrides"] or 0, "rate": (stats["overrides"] or 0) / n if n else 0.0}


def governance_overview(now: datetime | None = None) -> list[dict]:
    """One row per agent policy for the governance page: level, limits, today's budget use, agreement, eligibility
    and stop state."""
    now = now or timezone.now()
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    usage = {
        (u.agent_key, u.period): u.used
        for u in BudgetUsage.objects.filter(
            Q(period=BudgetPeriod.DAY, period_start=day) | Q(period=BudgetPeriod.HOUR, period_start=hour)
        )
    }
    stopped = set(StopSwitch.objects.filter(engaged=True, scope=StopScope.AGENT).values_list("target", flat=True))
    open_qa = dict(QAReview.objects.filter(status="open").values_list("agent_key").annotate(n=Count("id")).order_by())
    rows = []
    standings: dict[str, dict] = {}
    for policy in AgentPolicy.objects.select_related("current_version").order_by(
        "agent_key", "workflow_key", "step_key"
    ):
        version = policy.current_version
        if policy.agent_key not in standings:
            standings[policy.agent_key] = agent_standing(policy.agent_key)
        rows.append(
            {
                "policy": policy,
                "version": version,
                "used_today": usage.get((policy.agent_key, BudgetPeriod.DAY), 0),
                "decisions_this_hour": usage.get((policy.agent_key, BudgetPeriod.HOUR), 0),
                "standing": standings[policy.agent_key],
                "stopped": policy.agent_key in stopped,
                "open_qa": open_qa.get(policy.agent_key, 0),
            }
        )
    return rows


def stops_engaged() -> list[StopSwitch]:
    """Every engaged stop switch (the banner on every portal page)."""
    return list(StopSwitch.objects.filter(engaged=True).order_by("scope", "target"))


def governance_admin(user) -> bool:
    """Whether ``user`` may change governance: superusers and members of the governance admin group."""
    if not user.is_authenticated or not user.is_active:
        return False
    return user.is_superuser or user.groups.filter(name=settings.SELFOPS_GOVERNANCE["ADMIN_GROUP"]).exists()
