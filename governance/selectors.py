"""Reads of governance state that the engine and the portal ask for."""

from __future__ import annotations

from django.db.models import Q

from governance.evaluation import PolicySnapshot
from governance.models import AgentPolicy, PolicyVersion, StopScope, StopSwitch

_snapshots: dict[int, PolicySnapshot] = {}


def policy_for_agent(agent_key: str) -> PolicySnapshot | None:
    """The agent's current policy. One small query for the current version id; the snapshot itself is cached per
    process by version id, and versions are immutable, so a published change is seen by the next step."""
    version_id = AgentPolicy.objects.filter(agent_key=agent_key).values_list("current_version_id", flat=True).first()
    if version_id is None:
        return None
    snapshot = _snapshots.get(version_id)
    if snapshot is None:
        snapshot = PolicySnapshot.from_version(PolicyVersion.objects.select_related("policy").get(pk=version_id))
        _snapshots[version_id] = snapshot
    return snapshot


def engaged_stops(*, workflow_key: str, agent_key: str) -> list[StopSwitch]:
    """Engaged stop switches that cover a step of ``workflow_key`` run by ``agent_key``; read from the database every
    time (never a long-lived cache), so a stop takes effect before the next step starts."""
    return list(
        StopSwitch.objects.filter(engaged=True).filter(
            Q(scope=StopScope.GLOBAL)
            | Q(scope=StopScope.WORKFLOW, target=workflow_key)
            | Q(scope=StopScope.AGENT, target=agent_key)
        )
    )


def clear_caches() -> None:
    """Forget cached policy snapshots (tests, whose rolled-back ids can be reused)."""
    _snapshots.clear()


def current_policies() -> dict[str, PolicySnapshot]:
    """Every agent's current policy in one query (snapshots cached per process by immutable version id)."""
    current = dict(
        AgentPolicy.objects.filter(current_version__isnull=False).values_list("agent_key", "current_version_id")
    )
    missing = [vid for vid in current.values() if vid not in _snapshots]
    if missing:
        for version in PolicyVersion.objects.select_related("policy").filter(pk__in=missing):
            _snapshots[version.pk] = PolicySnapshot.from_version(version)
    return {key: _snapshots[vid] for key, vid in current.items()}


def cost_budget_exhausted(agent_key: str, *, today=None) -> dict | None:
    """The agent's budget when today's spending has reached its daily limit, else None (also without a budget)."""
    from django.utils import timezone

    from governance.models import AgentCostBudget

    today = today or timezone.now().date()
    budget = AgentCostBudget.objects.filter(agent_key=agent_key).values("daily_limit", "spent", "day").first()
    if budget is None or budget["day"] != today:
        return None if budget is None or budget["daily_limit"] > 0 else {**budget, "spent": 0}
    return budget if budget["spent"] >= budget["daily_limit"] else None
