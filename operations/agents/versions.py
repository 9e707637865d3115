"""Agent versions and their rollout: which version runs a step, replay on closed cases, canary, promote, rollback.

The engine asks ``resolve(agent_key, case)`` for every step. Without any ``AgentVersion`` row for the key, the agent
registered in code (or the live rule agent) runs, as before. With rows: the canary version takes the cases whose id
hashes below its share — deterministically, so a case always meets the same version — and the live version the rest.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from governance.evaluation import evaluate
from governance.selectors import cost_budget_exhausted, policy_for_agent
from governance.services import cost_budget_consume
from operations.agents import AgentContext, Proposal, RegisteredAgent, ResolvedAgent, get_agent, get_agent_version
from operations.errors import Conflict, ValidationFailed
from operations.models import (
    AgentKind,
    AgentVersion,
    AgentVersionStatus,
    Case,
    CaseStatus,
    RuleAgentVersion,
    StepRun,
    StepRunStatus,
)

COST_BUDGET_EXHAUSTED = "cost_budget_exhausted"
CLOSED = (CaseStatus.COMPLETED, CaseStatus.REJECTED)


def canary_bucket(agent_key: str, case_id: int) -> float:
    """A number in [0, 1) fixed by the agent and the case: below the canary share, the case meets the canary."""
    digest = hashlib.sha256(f"{agent_key}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class _Unavailable:
    def __init__(self, message: str):
        self.message = message

    def __call__(self, ctx: AgentContext) -> Proposal:
        raise LookupError(self.message)


def implementation(row: AgentVersion) -> RegisteredAgent:
    """The runnable agent behind one version row (a rule version, or an agent registered in code under the row's
    source key). A version whose code is not deployed here fails as an agent error that says so."""
    if row.kind == AgentKind.RULE:
        from operations.agents.rules import rule_agent

        rule_id = (
            RuleAgentVersion.objects.filter(agent_key=row.agent_key, version=row.version)
            .values_list("id", flat=True)
            .first()
        )
        if rule_id is not None:
            return rule_agent(rule_id)
        registered = None
    else:
        source, _, artifact = (row.source or row.agent_key).partition("@")
        registered = get_agent_version(source, row.version) or (get_agent(source) if source != row.agent_key else None)
        if registered is not None and row.kind == AgentKind.ML and artifact:
            from operations.agents.ml import pinned

            registered = replace(registered, fn=pinned(registered.fn, source, artifact))
    if registered is None:
        message = f"version {row.version} of {row.agent_key} ({row.kind}) is not available in this deployment"
        return RegisteredAgent(key=row.agent_key, version=row.version, fn=_Unavailable(message), kind=row.kind)
    return registered


# The versions taking traffic, of every agent, read in one query and cached for ROUTING_TTL seconds: a step costs no
# query for it, and a rollout change reaches other processes within that time (this process at once: the services
# clear the cache).
ROUTING_TTL = 1.0
_routing: dict[str, tuple[float, dict[str, list[AgentVersion]]]] = {}


def _taking_traffic(agent_key: str) -> list[AgentVersion]:
    now = time.monotonic()
    cached = _routing.get("all")
    if cached is None or cached[0] <= now:
        by_key: dict[str, list[AgentVersion]] = {}
        for row in AgentVersion.objects.filter(status__in=(AgentVersionStatus.LIVE, AgentVersionStatus.CANARY)).only(
            "agent_key", "version", "kind", "source", "status", "canary_share"
        ):
            by_key.setdefault(row.agent_key, []).append(row)
        cached = _routing["all"] = (now + ROUTING_TTL, by_key)
    return cached[1].get(agent_key, [])


_budgets: dict[str, tuple[float, dict | None]] = {}


def _budget_exhausted(agent_key: str) -> dict | None:
    now = time.monotonic()
    cached = _budgets.get(agent_key)
    if cached is None or cached[0] <= now:
        cached = _budgets[agent_key] = (now + ROUTING_TTL, cost_budget_exhausted(agent_key))
    return cached[1]


def clear_caches() -> None:
    _routing.clear()
    _budgets.clear()


def resolve(agent_key: str, case: Case | None = None) -> ResolvedAgent | None:
    """The agent version that runs ``agent_key``'s step for ``case`` (None: nothing is registered under the key)."""
    rows = _taking_traffic(agent_key)
    live = next((r for r in rows if r.status == AgentVersionStatus.LIVE), None)
    canary = next((r for r in rows if r.status == AgentVersionStatus.CANARY), None)
    chosen = live
    if canary is not None and case is not None and canary_bucket(agent_key, case.pk) < float(canary.canary_share):
        chosen = canary
    if chosen is not None:
        registered = implementation(chosen)
        resolved = ResolvedAgent(key=agent_key, version=chosen.version, kind=chosen.kind, impl=registered.fn)
    else:
        registered = get_agent(agent_key)
        if registered is None:
            return None
        resolved = ResolvedAgent(key=agent_key, version=registered.version, kind=registered.kind, impl=registered.fn)
    if resolved.kind == AgentKind.LLM and (budget := _budget_exhausted(agent_key)) is not None:
        resolved.hold_reason = COST_BUDGET_EXHAUSTED
        resolved.hold_message = (
            f"The agent's daily cost budget is used up ({budget['spent']} of {budget['daily_limit']}): "
            "a person takes this step."
        )
    return resolved


def charge(resolved: Any) -> dict:
    """The usage fields of the StepRun for a call just made, with its cost counted against the agent's budget."""
    usage = getattr(resolved, "usage", None) or {}
    if usage.get("cost"):
        cost_budget_consume(agent_key=resolved.key, cost=usage["cost"])
        _budgets.pop(resolved.key, None)  # this process sees its own spending at once, others within ROUTING_TTL
    return {k: usage[k] for k in ("llm_model", "prompt_version", "tokens_in", "tokens_out", "cost") if k in usage}


# --- rollout services ----------------------------------------------------------------------------------------------


def _audit_change(row: AgentVersion, *, actor: Actor, before: str, note: str = "") -> None:
    audit_record(
        actor=actor,
        action=AuditAction.AGENT_VERSION_CHANGED,
        subject=row,
        data={
            "agent_key": row.agent_key,
            "version": row.version,
            "kind": row.kind,
            "from": before,
            "to": row.status,
            "canary_share": str(row.canary_share),
            "note": note,
        },
    )


def _set_status(row: AgentVersion, status: str, *, share: Decimal | None = None) -> None:
    row.status = status
    if share is not None:
        row.canary_share = share
    row.save(update_fields=["status", "canary_share", "updated_at"])
    if row.kind == AgentKind.RULE:
        RuleAgentVersion.objects.filter(agent_key=row.agent_key, version=row.version).update(status=status)
    from operations.agents import rules

    rules.clear_caches()
    # after the commit too: a concurrent resolve in this process may have cached the rows before it
    transaction.on_commit(clear_caches)
    clear_caches()


def _locked(agent_key: str, version: str) -> AgentVersion:
    # Lock order: every version row of the agent, by pk, so two rollout changes of one agent queue up.
    rows = list(AgentVersion.objects.select_for_update().filter(agent_key=agent_key).order_by("pk"))
    row = next((r for r in rows if r.version == version), None)
    if row is None:
        raise ValidationFailed(f"{agent_key} has no version {version}", fields={"version": "unknown"})
    return row


def agent_version_register(
    *, agent_key: str, version: str, kind: str, actor: Actor, source: str = "", description: str = ""
) -> AgentVersion:
    """Enter a version of an agent in the rollout as a draft (it takes no traffic)."""
    if kind not in AgentKind.values:
        raise ValidationFailed(f"unknown agent kind {kind!r}", fields={"kind": "unknown"})
    if not agent_key or not version:
        raise ValidationFailed("an agent key and a version are required", fields={"version": "required"})
    with transaction.atomic():
        row, created = AgentVersion.objects.get_or_create(
            agent_key=agent_key,
            version=version,
            defaults={"kind": kind, "source": source, "description": description, "created_by": actor.label},
        )
        if not created:
            raise Conflict(f"{agent_key} already has a version {version}", fields={"version": "taken"})
        _audit_change(row, actor=actor, before="", note="registered")
    return row


def agent_version_start_canary(*, agent_key: str, version: str, share: Decimal, actor: Actor) -> AgentVersion:
    """Send ``share`` (0..1) of new cases to a replayed version; the rest stays with the live version."""
    share = Decimal(str(share))
    if not Decimal(0) < share <= Decimal(1):
        raise ValidationFailed("the canary share must be above 0 and at most 1", fields={"share": "0 < share <= 1"})
    with transaction.atomic():
        row = _locked(agent_key, version)
        if row.status not in (AgentVersionStatus.DRAFT, AgentVersionStatus.REPLAYING):
            raise Conflict(f"version {version} is {row.status}: only a draft or replayed version becomes a canary")
        if not row.replay:
            raise Conflict(f"version {version} has not been replayed on closed cases yet")
        if AgentVersion.objects.filter(agent_key=agent_key, status=AgentVersionStatus.CANARY).exists():
            raise Conflict(f"{agent_key} already has a canary: promote or roll it back first")
        before = row.status
        _set_status(row, AgentVersionStatus.CANARY, share=share.quantize(Decimal("0.001")))
        _audit_change(row, actor=actor, before=before)
    return row


def agent_version_promote(*, agent_key: str, version: str, actor: Actor, note: str = "") -> AgentVersion:
    """Make a canary (or a replayed version) the live version of its agent; the previous live version retires."""
    with transaction.atomic():
        row = _locked(agent_key, version)
        if row.status not in (AgentVersionStatus.CANARY, AgentVersionStatus.REPLAYING):
            raise Conflict(f"version {version} is {row.status}: only a canary or a replayed version is promoted")
        for previous in AgentVersion.objects.filter(agent_key=agent_key, status=AgentVersionStatus.LIVE):
            _set_status(previous, AgentVersionStatus.RETIRED, share=Decimal(0))
            _audit_change(previous, actor=actor, before=AgentVersionStatus.LIVE, note=f"replaced by {version}")
        before = row.status
        _set_status(row, AgentVersionStatus.LIVE, share=Decimal(0))
        _audit_change(row, actor=actor, before=before, note=note)
    return row


def agent_version_rollback(*, agent_key: str, version: str, actor: Actor, note: str = "") -> AgentVersion:
    """Take a canary or live version out of traffic at once. Its cases go back to the live version (for a canary) or
    to the agent registered in code (for a live version), starting with the next step."""
    with transaction.atomic():
        row = _locked(agent_key, version)
        if row.status not in (AgentVersionStatus.CANARY, AgentVersionStatus.LIVE):
            raise Conflict(f"version {version} is {row.status}: it takes no traffic to roll back")
        before = row.status
        _set_status(row, AgentVersionStatus.RETIRED, share=Decimal(0))
        _audit_change(row, actor=actor, before=before, note=note or "rolled back")
    return row


# --- replay on closed cases ----------------------------------------------------------------------------------------


def _context_before(runs: list[StepRun], step_key: str, decisions: dict) -> dict:
    """The case context as the step's agent saw it: data of the proposals applied before the step's first run."""
    context: dict = {}
    seen: list[str] = []
    for run in runs:
        if run.step.key == step_key:
            break
        applied = run.status == StepRunStatus.SUCCEEDED or (
            run.status == StepRunStatus.ESCALATED and run.step.key in decisions
        )
        if applied and run.proposal:
            context.update(run.proposal.get("data") or {})
            seen.append(run.step.key)
    context["decisions"] = {k: decisions[k] for k in seen if k in decisions}
    return context


def _amount(value) -> Decimal | None:
    return Decimal(str(value)) if value not in (None, "") else None


def replay_cases(*, agent_key: str, last: int) -> list[Case]:
    """The last ``last`` closed cases on which a step of ``agent_key`` was decided."""
    case_ids = (
        StepRun.objects.filter(agent_key=agent_key, case__status__in=CLOSED)
        .order_by("-case_id")
        .values_list("case_id", flat=True)
        .distinct()[:last]
    )
    return list(Case.objects.filter(pk__in=list(case_ids)).select_related("workflow").order_by("-id"))


def replay_run(*, agent_key: str, registered: RegisteredAgent, last: int) -> dict:
    """Run ``registered`` on the last ``last`` closed cases and compare with what was finally decided. Reads only."""
    from operations.engine import case_view
    from operations.selectors import reference_lookup, reference_lookup_many

    policy = policy_for_agent(agent_key)
    rows = []
    for case in replay_cases(agent_key=agent_key, last=last):
        runs = list(case.step_runs.select_related("step").order_by("id"))
        target = next((r for r in runs if r.agent_key == agent_key), None)
        decisions = case.context.get("decisions") or {}
        final = decisions.get(target.step.key) if target else None
        if target is None or final is None:
            continue
        context = _context_before(runs, target.step.key, decisions)
        ctx = AgentContext(
            case_id=case.pk,
            reference=case.reference,
            workflow_key=case.workflow.key,
            step_key=target.step.key,
            attempt=1,
            payload=case.payload,
            context=context,
            policy=policy,
            lookup=reference_lookup,
            lookup_many=reference_lookup_many,
        )
        row: dict[str, Any] = {
            "case_id": case.pk,
            "reference": case.reference,
            "final_outcome": final.get("outcome"),
            "final_amount": final.get("amount"),
            "decided_by": final.get("decided_by", ""),
        }
        try:
            with transaction.atomic():
                result = registered.fn(ctx)
            proposal = result if isinstance(result, Proposal) else Proposal.from_dict(result)
        except Exception as exc:  # a failing version is a finding of the replay, not a crash of it
            row.update(error=f"{type(exc).__name__}: {exc}"[:300], agrees=False)
            rows.append(row)
            continue
        verdict = evaluate(policy, proposal, case_view(case) | {"context": context})
        final_amount = _amount(final.get("amount"))
        row.update(
            outcome=proposal.outcome,
            amount=str(proposal.amount) if proposal.amount is not None else None,
            confidence=proposal.confidence,
            agrees=proposal.outcome == final.get("outcome"),
            amount_error=(
                str(abs(proposal.amount - final_amount))
                if proposal.amount is not None and final_amount is not None
                else None
            ),
            would_escalate=not verdict.allowed,
            reasons=[r.code for r in verdict.reasons],
        )
        rows.append(row)
    return summarize(rows, policy_version=policy.version if policy else None)


def summarize(rows: list[dict], *, policy_version: int | None = None) -> dict:
    ran = [r for r in rows if "error" not in r]
    errors = [r.get("amount_error") for r in ran if r.get("amount_error") is not None]
    agreed = sum(1 for r in ran if r["agrees"])
    return {
        "cases": len(rows),
        "errors": len(rows) - len(ran),
        "agreed": agreed,
        "agreement": round(agreed / len(rows), 4) if rows else None,
        "amount_compared": len(errors),
        "mean_abs_amount_error": str((sum(Decimal(e) for e in errors) / len(errors)).quantize(Decimal("0.01")))
        if errors
        else None,
        "would_escalate": sum(1 for r in ran if r["would_escalate"]),
        "human_decided": sum(1 for r in rows if str(r.get("decided_by", "")).startswith("human")),
        "policy_version": policy_version,
        "replayed_at": timezone.now().isoformat(),
        "rows": rows[:100],
    }


def agent_replay(*, agent_key: str, version: str, last: int, actor: Actor) -> dict:
    """Replay a version on the last ``last`` closed cases, store the results on the version (a draft becomes
    ``replaying``: evaluated, not yet taking traffic), and audit it."""
    if last < 1 or last > 10000:
        raise ValidationFailed("replay between 1 and 10,000 cases", fields={"last": "1..10000"})
    row = AgentVersion.objects.filter(agent_key=agent_key, version=version).first()
    if row is None:
        raise ValidationFailed(f"{agent_key} has no version {version}", fields={"version": "unknown"})
    result = replay_run(agent_key=agent_key, registered=implementation(row), last=last)
    with transaction.atomic():
        row = _locked(agent_key, version)
        row.replay = result
        row.save(update_fields=["replay", "updated_at"])
        if row.status == AgentVersionStatus.DRAFT:
            _set_status(row, AgentVersionStatus.REPLAYING)
        audit_record(
            actor=actor,
            action=AuditAction.AGENT_REPLAYED,
            subject=row,
            data={k: v for k, v in result.items() if k != "rows"} | {"version": version, "last": last},
        )
    return result


# --- reads ----------------------------------------------------------------------------------------------------------


def live_agreement(agent_key: str, version: str, *, last: int = 500) -> dict:
    """How a version's proposals on real traffic compare with what was finally decided on the closed cases."""
    runs = list(
        StepRun.objects.filter(
            agent_key=agent_key,
            agent_version=version,
            status__in=(StepRunStatus.SUCCEEDED, StepRunStatus.ESCALATED, StepRunStatus.FAILED),
        )
        .select_related("case", "step")
        .order_by("-id")[:last]
    )
    closed = agreed = 0
    for run in runs:
        if run.case.status not in CLOSED or not run.proposal:
            continue
        final = (run.case.context.get("decisions") or {}).get(run.step.key)
        if final is None:
            continue
        closed += 1
        agreed += run.proposal.get("outcome") == final.get("outcome")
    return {
        "steps": len(runs),
        "escalated": sum(1 for r in runs if r.status == StepRunStatus.ESCALATED),
        "failed": sum(1 for r in runs if r.status == StepRunStatus.FAILED),
        "closed": closed,
        "agreed": agreed,
        "agreement": round(agreed / closed, 4) if closed else None,
    }


def agent_versions_overview() -> list[dict]:
    """Every agent that has versions: its versions with their replay results and live agreement."""
    by_key: dict[str, list[dict]] = {}
    for row in AgentVersion.objects.order_by("agent_key", "-created_at"):
        by_key.setdefault(row.agent_key, []).append(
            {"row": row, "replay": row.replay or {}, "live": live_agreement(row.agent_key, row.version)}
        )
    overview = []
    for key, versions in by_key.items():
        registered = get_agent(key)
        default = registered.version if registered else ""
        overview.append(
            {
                "agent_key": key,
                "versions": versions,
                "default_version": default,
                "default_live": live_agreement(key, default) if default else None,
                "has_live": any(v["row"].status == AgentVersionStatus.LIVE for v in versions),
            }
        )
    return overview
