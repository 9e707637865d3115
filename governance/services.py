"""Changes to governance: publishing policy versions, flipping stop switches, consuming budgets, recording how humans
judged agents' proposals, QA reviews, promotion and demotion — each audited in the transaction of the change."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from governance.errors import GovernanceError
from governance.evaluation import PolicySnapshot, Reason, Verdict
from governance.models import (
    AgentPolicy,
    AutonomyLevel,
    BudgetPeriod,
    BudgetUsage,
    HumanJudgement,
    JudgementSource,
    PolicyVersion,
    QAReview,
    QAStatus,
    StopScope,
    StopSwitch,
)
from governance.rules import rule_errors
from governance.selectors import general_policy
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
    workflow_key: str = "",
    step_key: str = "",
) -> PolicyVersion:
    """Publish a new immutable version of ``agent_key``'s policy and make it current; steps already deciding keep
    the version they started with. With ``workflow_key`` and ``step_key`` the policy is narrowed to that workflow
    step (which the agent must run): it applies there instead of the agent's general policy."""
    policy_scope_check(agent_key=agent_key, workflow_key=workflow_key, step_key=step_key)
    if autonomy not in AutonomyLevel.values:
        raise GovernanceError(f"unknown autonomy level {autonomy!r}", fields={"autonomy": "unknown level"})
    if errors := rule_errors(rules):
        raise GovernanceError("the policy's rules are not valid: " + "; ".join(errors.values()), fields=errors)
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
        policy, _ = AgentPolicy.objects.select_for_update().get_or_create(
            agent_key=agent_key, workflow_key=workflow_key, step_key=step_key
        )
        if name and policy.name != name:
            policy.name = name
        previous = policy.current_version
        version.policy = policy
        version.number = (policy.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        try:
            version.full_clean(exclude=["policy"])
        except ValidationError as exc:
            fields = {k: " ".join(v) for k, v in exc.message_dict.items()}
            raise GovernanceError(
                "the policy terms are not valid: " + "; ".join(fields.values()), fields=fields
            ) from exc
        version.save()
        policy.current_version = version
        policy.save()
        audit_record(
            actor=actor,
            action=AuditAction.POLICY_CHANGED,
            subject=policy,
            data={
                "version": version.number,
                "scope": policy.scope,
                "before": _version_terms(previous),
                "after": _version_terms(version),
                "note": note,
            },
        )
    return version


def policy_scope_check(*, agent_key: str, workflow_key: str, step_key: str) -> None:
    """Raise ``GovernanceError`` unless the scope is general (no step) or one step of an installed workflow that
    this agent runs."""
    if not workflow_key and not step_key:
        return
    if not workflow_key or not step_key:
        raise GovernanceError(
            "a policy narrowed to a step names both the workflow and the step",
            fields={"workflow_key" if not workflow_key else "step_key": "required with the other"},
        )
    step = apps.get_model("operations", "Step")
    if not step.objects.filter(workflow__key=workflow_key, key=step_key, agent_key=agent_key).exists():
        raise GovernanceError(
            f"no installed workflow '{workflow_key}' has a step '{step_key}' run by agent '{agent_key}'",
            fields={"step_key": "not a step of this agent in that workflow"},
        )


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


def policy_terms(version: PolicyVersion) -> dict:
    """The terms of a version as keyword arguments for ``policy_publish`` (to publish a changed copy)."""
    return {f: getattr(version, f) for f in POLICY_FIELDS}


# --- budgets and rates ----------------------------------------------------------------------------------------------


def _period_start(period: str, now: datetime) -> datetime:
    start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if period == BudgetPeriod.DAY else start


def _take(agent_key: str, period: str, start: datetime, amount: Decimal, cap: Decimal | None) -> bool:
    """Add ``amount`` to the period's usage if it stays within ``cap`` (no cap: always). One conditional UPDATE: the
    database checks ``used + amount <= cap`` under the row lock, so concurrent takers never overspend."""
    rows = BudgetUsage.objects.filter(agent_key=agent_key, period=period, period_start=start)
    bounded = rows if cap is None else rows.filter(used__lte=cap - amount)
    if bounded.update(used=F("used") + amount, updated_at=timezone.now()):
        return True
    if rows.exists():
        return False
    BudgetUsage.objects.bulk_create(
        [BudgetUsage(agent_key=agent_key, period=period, period_start=start)], ignore_conflicts=True
    )
    return bool(bounded.update(used=F("used") + amount, updated_at=timezone.now()))


def budget_used(agent_key: str, period: str, now: datetime | None = None) -> Decimal:
    start = _period_start(period, now or timezone.now())
    used = (
        BudgetUsage.objects.filter(agent_key=agent_key, period=period, period_start=start)
        .values_list("used", flat=True)
        .first()
    )
    return used if used is not None else Decimal(0)


class _Refused(Exception):
    pass


def budget_consume(*, policy: PolicySnapshot, proposal: Any, verdict: Verdict, now: datetime | None = None) -> Verdict:
    """Consume the agent's hourly decision rate and daily amount budget for an allowed verdict, in the caller's
    transaction (the engine's step). If either is spent, nothing is consumed and the verdict becomes an escalation
    with reason ``rate_exceeded`` and/or ``budget_exhausted``. Escalated verdicts consume nothing."""
    if not verdict.allowed or (policy.daily_amount_budget is None and policy.hourly_decision_limit is None):
        return verdict
    now = now or timezone.now()
    amount = Decimal(proposal.amount) if proposal.amount is not None else Decimal(0)
    suffix = f" (policy v{policy.version})"
    reasons: list[Reason] = []
    try:
        with transaction.atomic():  # a savepoint: a refusal undoes what the other budget took
            if policy.hourly_decision_limit is not None:
                start = _period_start(BudgetPeriod.HOUR, now)
                if not _take(
                    policy.agent_key, BudgetPeriod.HOUR, start, Decimal(1), Decimal(policy.hourly_decision_limit)
                ):
                    reasons.append(
                        Reason(
                            code="rate_exceeded",
                            message=f"the agent already took {policy.hourly_decision_limit} decisions alone this hour "
                            f"(the limit){suffix}",
                            values={"limit": policy.hourly_decision_limit, "hour": start.isoformat()},
                        )
                    )
            if policy.daily_amount_budget is not None and amount > 0:
                start = _period_start(BudgetPeriod.DAY, now)
                if not _take(policy.agent_key, BudgetPeriod.DAY, start, amount, policy.daily_amount_budget):
                    used = budget_used(policy.agent_key, BudgetPeriod.DAY, now)
                    reasons.append(
                        Reason(
                            code="budget_exhausted",
                            message=f"amount {amount:,.2f} would exceed today's budget "
                            f"{policy.daily_amount_budget:,.2f} ({used:,.2f} used){suffix}",
                            values={
                                "amount": str(amount),
                                "budget": str(policy.daily_amount_budget),
                                "used": str(used),
                            },
                        )
                    )
            if reasons:
                raise _Refused
    except _Refused:
        return Verdict(
            decision="escalate", reasons=tuple(reasons), policy_version=policy.version, autonomy=policy.autonomy
        )
    return verdict


# --- QA sampling and human judgements -------------------------------------------------------------------------------


def qa_sampled(*, rate: Decimal, case_id: int, step_key: str) -> bool:
    """Whether this (case, step) falls in the QA sample. Deterministic, so a step that runs twice is sampled alike."""
    if not rate:
        return False
    digest = hashlib.sha256(f"qa-{case_id}-{step_key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < float(rate)


def qa_review_open(
    *, policy: PolicySnapshot, case_id: int, step_key: str, step_run_id: int | None, proposal: dict
) -> QAReview | None:
    """Open a post-hoc QA review of an autonomous decision when it falls in the policy's sample; the case goes on."""
    if not qa_sampled(rate=policy.qa_sample_rate, case_id=case_id, step_key=step_key):
        return None
    with transaction.atomic():
        created = QAReview.objects.bulk_create(
            [
                QAReview(
                    agent_key=policy.agent_key,
                    policy_version=policy.version,
                    case_id=case_id,
                    step_key=step_key,
                    step_run_id=step_run_id,
                    proposal=proposal,
                )
            ],
            ignore_conflicts=True,
        )
        review = QAReview.objects.filter(case_id=case_id, step_key=step_key).first() if created else None
        if review is not None:
            audit_record(
                actor=Actor.system("governance"),
                action=AuditAction.QA_OPENED,
                subject=review,
                case_id=case_id,
                data={"agent": policy.agent_key, "step": step_key, "sample_rate": str(policy.qa_sample_rate)},
            )
    return review


def qa_review_decide(*, review_id: int, agreed: bool, note: str, actor: Actor) -> QAReview:
    """A human's verdict on a sampled autonomous decision: agree or disagree (with a note). Counts towards the
    agent's agreement rate and may demote it."""
    if not (note or "").strip():
        raise GovernanceError("a note is required", fields={"note": "required"})
    with transaction.atomic():
        review = QAReview.objects.select_for_update().filter(pk=review_id).first()
        if review is None:
            raise GovernanceError(f"no QA review {review_id}", fields={"review": "unknown"})
        if review.status != QAStatus.OPEN:
            raise GovernanceError(f"this QA review was already decided by {review.reviewed_by}")
        now = timezone.now()
        review.status = QAStatus.AGREED if agreed else QAStatus.DISAGREED
        review.note, review.reviewed_by, review.reviewed_at = note, actor.label, now
        review.save()
        _judge(
            agent_key=review.agent_key,
            source=JudgementSource.QA,
            autonomy=AutonomyLevel.BOUNDED,
            policy_version=review.policy_version,
            case_id=review.case_id,
            subject=f"qa:{review.pk}",
            agreed=agreed,
            proposal=review.proposal,
            decision={"agreed": agreed, "note": note},
            actor=actor,
            now=now,
        )
        audit_record(
            actor=actor,
            action=AuditAction.QA_REVIEWED,
            subject=review,
            case_id=review.case_id,
            data={"agent": review.agent_key, "agreed": agreed, "note": note},
        )
        demotion_check(agent_key=review.agent_key)
    return review


def _same_decision(proposal: dict, decision: dict) -> bool:
    def amount(value):
        try:
            return Decimal(str(value)) if value not in (None, "") else None
        except InvalidOperation:
            return value

    return proposal.get("outcome") == decision.get("outcome") and amount(proposal.get("amount")) == amount(
        decision.get("amount")
    )


def decision_record_agreement(
    *,
    agent_key: str,
    escalation_id: int,
    case_id: int,
    reasons: list[dict],
    proposal: dict | None,
    resolution: str,
    decision: dict | None,
    reject_outcome: str = "",
    actor: Actor,
) -> dict:
    """Called by ``escalation_resolve`` inside its transaction. For an escalation of a shadow or supervised agent,
    store whether the human agreed with the agent's proposal (approve: yes; amend: only if outcome and amount stay;
    reject: only if the agent proposed the step's reject outcome; retry and cancel are not judgements). A human
    approval consumes the agent's daily amount budget even above it, recorded as ``over_budget``. Returns what the
    caller adds to its audit data."""
    extra: dict = {}
    codes = {r.get("code") for r in reasons or ()}
    approved = resolution in ("approve", "amend") and decision is not None
    if approved and decision.get("amount") not in (None, ""):
        extra.update(_consume_approval(agent_key, Decimal(str(decision["amount"]))))
    source = (
        JudgementSource.SHADOW if "shadow" in codes else JudgementSource.SUPERVISED if "supervised" in codes else None
    )
    if source is None or not proposal or resolution not in ("approve", "amend", "reject"):
        return extra
    if resolution == "reject":
        agreed = bool(reject_outcome) and proposal.get("outcome") == reject_outcome
        decision = {"outcome": reject_outcome or "@reject"}
    else:
        agreed = _same_decision(proposal, decision)
    current = general_policy(agent_key).values_list("current_version__number", flat=True).first()
    _judge(
        agent_key=agent_key,
        source=source,
        autonomy=str(source),
        policy_version=current,
        case_id=case_id,
        subject=f"escalation:{escalation_id}",
        agreed=agreed,
        proposal=proposal,
        decision=decision,
        actor=actor,
        now=timezone.now(),
    )
    extra["agreed_with_agent"] = agreed
    return extra


def _consume_approval(agent_key: str, amount: Decimal) -> dict:
    budget = general_policy(agent_key).values_list("current_version__daily_amount_budget", flat=True).first()
    if budget is None or amount <= 0:
        return {}
    now = timezone.now()
    start = _period_start(BudgetPeriod.DAY, now)
    _take(agent_key, BudgetPeriod.DAY, start, amount, None)
    used = budget_used(agent_key, BudgetPeriod.DAY, now)
    return {"over_budget": used > budget, "budget": {"daily": str(budget), "used": str(used)}}


def _judge(*, agent_key, source, autonomy, policy_version, case_id, subject, agreed, proposal, decision, actor, now):
    HumanJudgement.objects.create(
        agent_key=agent_key,
        source=source,
        autonomy=autonomy,
        policy_version=policy_version,
        case_id=case_id,
        subject=subject,
        agreed=agreed,
        proposal=proposal,
        decision=decision,
        decided_by=actor.label,
        decided_at=now,
    )


# --- promotion and demotion -----------------------------------------------------------------------------------------

NEXT_LEVEL = {AutonomyLevel.SHADOW: AutonomyLevel.SUPERVISED, AutonomyLevel.SUPERVISED: AutonomyLevel.BOUNDED}


def governance_setting(name: str):
    return settings.SELFOPS_GOVERNANCE[name]


def policy_promote(*, agent_key: str, actor: Actor, note: str = "") -> PolicyVersion:
    """Raise an eligible agent one autonomy level (shadow → supervised → bounded) as a new policy version."""
    from governance.selectors import agent_standing

    with transaction.atomic():
        policy = general_policy(agent_key).select_for_update(of=("self",)).select_related("current_version").first()
        if policy is None or policy.current_version is None:
            raise GovernanceError(f"agent '{agent_key}' has no policy", fields={"agent": "unknown"})
        standing = agent_standing(agent_key)
        if not standing["eligible"]:
            raise GovernanceError(
                f"agent '{agent_key}' is not eligible for promotion: {standing['why']}",
                fields={"agent": "not eligible"},
            )
        before = policy.current_version.autonomy
        terms = {**policy_terms(policy.current_version), "autonomy": NEXT_LEVEL[before]}
        version = policy_publish(agent_key=agent_key, actor=actor, note=note or f"promoted from {before}", **terms)
        audit_record(
            actor=actor,
            action=AuditAction.POLICY_PROMOTED,
            subject=policy,
            data={"from": before, "to": version.autonomy, "version": version.number, "standing": _plain(standing)},
        )
    return version


def demotion_check(*, agent_key: str, now: datetime | None = None) -> PolicyVersion | None:
    """Demote a bounded agent to supervised when humans overrode too large a share of its recent decisions: each of
    its bounded policies (the general one and any narrowed to a step) gets a supervised version. Runs in the caller's
    transaction after each judgement; notifies the governance admins by email once it commits. Returns the first
    version published (None when nothing was demoted)."""
    from governance.selectors import override_rate

    policies = list(
        AgentPolicy.objects.select_for_update(of=("self",))
        .select_related("current_version")
        .filter(agent_key=agent_key, current_version__autonomy=AutonomyLevel.BOUNDED)
        .order_by("workflow_key", "step_key")
    )
    actor = Actor.system("governance")
    demoted = []
    for policy in policies:
        window = override_rate(agent_key, now=now, since=policy.current_version.created_at)
        if window["decisions"] < governance_setting("DEMOTE_MIN_DECISIONS"):
            continue
        if window["rate"] <= governance_setting("DEMOTE_OVERRIDE_RATE"):
            continue
        terms = {**policy_terms(policy.current_version), "autonomy": AutonomyLevel.SUPERVISED}
        why = (
            f"humans overrode {window['overrides']} of its last {window['decisions']} decisions "
            f"({window['rate']:.0%} > {governance_setting('DEMOTE_OVERRIDE_RATE'):.0%} in "
            f"{governance_setting('DEMOTE_WINDOW_HOURS')} h)"
        )
        version = policy_publish(
            agent_key=agent_key,
            workflow_key=policy.workflow_key,
            step_key=policy.step_key,
            actor=actor,
            note=f"demoted automatically: {why}",
            **terms,
        )
        audit_record(
            actor=actor,
            action=AuditAction.POLICY_DEMOTED,
            subject=policy,
            data={
                "from": AutonomyLevel.BOUNDED,
                "to": AutonomyLevel.SUPERVISED,
                "version": version.number,
                "scope": policy.scope,
                **window,
            },
        )
        demoted.append((version, why))
    if not demoted:
        return None
    why = demoted[0][1]
    transaction.on_commit(lambda: _notify_admins(f"selfops: agent {agent_key} demoted to supervised", why))
    return demoted[0][0]


def _notify_admins(subject: str, body: str) -> None:
    from django.contrib.auth import get_user_model
    from django.core.mail import send_mail

    emails = list(
        get_user_model()
        .objects.filter(groups__name=governance_setting("ADMIN_GROUP"), is_active=True)
        .exclude(email="")
        .values_list("email", flat=True)
        .distinct()
    )
    if emails:
        send_mail(subject, body, None, emails)


def _plain(value):
    return {k: (float(v) if isinstance(v, Decimal) else v) for k, v in value.items()}
