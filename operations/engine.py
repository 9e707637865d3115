"""The engine: advances a case through its workflow's automatic steps.

``advance_case`` is what a django-q2 worker runs. Its shape, and why:

1. *Acquire* (one short transaction): lock the case row with ``skip_locked`` (a case another worker is advancing is
   skipped), refuse if another worker holds a live lease, count the attempt on the current step and take the lease.
   This commits *before* the agent runs, so a worker that dies mid-step still leaves its attempt counted (django-q2's
   ``max_attempts`` does not hold when a worker dies) and its expired lease tells the next worker what happened.
2. *Step* (one transaction per step): lock the case, check stop switches and the agent's autonomy, run the agent,
   ask governance for a verdict *before* any effect, then apply (context, outbox effect keyed by case and step, next
   step) or escalate — with the step's audit events written in bulk in the same transaction. Consecutive automatic
   steps run in one task, since a queue hop costs far more than a step (ARCHITECTURE.md, "Execution and scale").
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from enum import Enum

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.actors import SYSTEM, Actor
from audit.context import correlation
from audit.models import AuditAction
from audit.services import audit_event, audit_record_many
from governance.evaluation import PolicySnapshot, Reason, Verdict, evaluate
from governance.models import AutonomyLevel
from governance.selectors import current_policies, engaged_stops
from governance.services import budget_consume, qa_review_open
from operations.agents import AgentContext, Proposal, ProposalError
from operations.agents import versions as agent_versions
from operations.models import (
    EFFECT_FAILED_REASON,
    TERMINAL_COMPLETE,
    TERMINAL_REJECT,
    Case,
    CaseStatus,
    Escalation,
    OutboxEntry,
    OutboxKind,
    Step,
    StepEffect,
    StepRun,
    StepRunStatus,
    WaitReason,
)
from operations.queue import enqueue_advance, enqueue_delivery
from operations.selectors import reference_lookup, reference_lookup_many, workflow_steps

logger = logging.getLogger(__name__)


def engine_setting(name: str):
    return settings.SELFOPS[name]


class Next(Enum):
    CONTINUE = "continue"  # the case moved on and this task may run its next step
    RETRY = "retry"  # the agent failed; try the step again after a backoff
    STOP = "stop"  # nothing more for this task: finished, waiting, parked, handed on, or not ours


class AgentFailure(Exception):
    """The agent raised, timed out, or returned something that is not a valid proposal."""


class AgentTimeout(AgentFailure):
    pass


@dataclass
class StepTx:
    """What one transaction of steps accumulates and writes together at the end: step runs (one INSERT), then what
    refers to them (escalations), then the audit events (one INSERT); and the effects to deliver after commit."""

    case: Case
    events: list = field(default_factory=list)  # builders of AuditEvent, run at flush when every id is known
    runs: list[StepRun] = field(default_factory=list)
    deferred: list = field(default_factory=list)  # writes that need the runs' ids
    effects: list[str] = field(default_factory=list)  # outbox keys owed by this transaction
    # the engine delivers owed effects itself once the transaction commits; other writers enqueue a delivery task
    deliver_inline: bool = False

    def audit(self, *, actor: Actor, action: str, subject=None, data: dict | None = None, **kwargs) -> None:
        if subject is None and "subject_type" not in kwargs:
            subject = self.case
        self.events.append(
            lambda: audit_event(actor=actor, action=action, subject=subject, case_id=self.case.pk, data=data, **kwargs)
        )

    def add_run(self, run: StepRun) -> StepRun:
        self.runs.append(run)
        return run

    def after_runs(self, write) -> None:
        self.deferred.append(write)

    def flush(self) -> None:
        if self.runs:
            StepRun.objects.bulk_create(self.runs)
        for write in self.deferred:
            write()
        events = [build() for build in self.events]
        from operations.api.webhooks import webhooks_owe_for

        webhooks_owe_for(self.case, events)  # the outbox of webhook deliveries, in this same transaction
        audit_record_many(events)
        self.runs, self.deferred, self.events = [], [], []


def _lease_seconds() -> int:
    return int(settings.Q_CLUSTER.get("timeout") or 60)


def advance_case(case_id: int) -> str:
    """Advance one case as far as its automatic steps go. Safe to run twice at once and to run again."""
    token = uuid.uuid4().hex
    with correlation(f"advance-{case_id}-{token[:8]}"):
        attempt = _acquire(case_id, token)
        if not attempt:
            return "skipped"
        budget = engine_setting("MAX_STEPS_PER_TASK")
        # After a failure or a lost worker, this task commits one step per transaction, so that a further crash is
        # charged to the step that really crashed; otherwise consecutive steps share one transaction.
        careful = attempt > 1
        delivered: list[str] = []
        try:
            while True:
                result, done = _run_steps(case_id, token, careful=careful, budget=budget, effects=delivered)
                budget -= done
                if result is Next.CONTINUE:
                    continue
                if result is Next.RETRY:
                    _backoff(case_id)
                    careful = True
                    if _acquire(case_id, token):
                        continue
                return result.value
        finally:
            _deliver_now(delivered)


def _deliver_now(keys: list[str]) -> None:
    """Deliver the effects this task's committed steps owe, in this worker and in one transaction, rather than
    paying a queue hop for each. An effect left undelivered (a crash right here, a failing gateway) stays pending
    for the sweeper."""
    if not keys:
        return
    from operations.services import outbox_deliver_many

    try:
        outbox_deliver_many(keys=keys)
    except Exception:  # the sweeper retries what is still pending
        logger.exception("delivering %s failed; they stay pending", ", ".join(keys))


def _backoff(case_id: int) -> None:
    # Agent errors are rare; a short sleep in the worker is simpler than a timer and keeps the retry in this task.
    attempt = Case.objects.filter(pk=case_id).values_list("step_attempt", flat=True).first() or 1
    delay = engine_setting("STEP_RETRY_BACKOFF") * (2 ** (attempt - 1))
    if delay > 0:
        time.sleep(min(delay, 10.0))


def _acquire(case_id: int, token: str) -> int:
    """Take the lease on a running case and count an attempt on its current step, committed before the agent runs.
    Returns the attempt number, or 0 when there is nothing for this worker to do."""
    now = timezone.now()
    with transaction.atomic():
        case = (
            Case.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("current_step", "workflow")
            .filter(pk=case_id, status=CaseStatus.RUNNING)
            .first()
        )
        if case is None:
            return 0  # finished, waiting, or locked by a worker that is mid-step
        if case.lease_owner and case.lease_owner != token and case.lease_expires_at and case.lease_expires_at > now:
            return 0  # another worker holds a live lease and will carry on
        tx = StepTx(case)
        step = case.current_step
        if case.lease_owner and case.lease_owner != token:
            # The previous holder's lease expired: its worker died mid-step. Record the lost attempt.
            lost = StepRun.objects.create(
                case=case,
                step=step,
                attempt=case.step_attempt,
                status=StepRunStatus.LOST,
                agent_key=step.agent_key,
                started_at=case.lease_expires_at - timedelta(seconds=_lease_seconds()),
                finished_at=now,
                error="the worker running this step stopped before finishing (lease expired)",
            )
            tx.audit(
                actor=SYSTEM,
                action=AuditAction.STEP_FAILED,
                subject=lost,
                data={"step": step.key, "attempt": lost.attempt, "error": lost.error},
            )
        if case.step_attempt >= engine_setting("STEP_MAX_ATTEMPTS"):
            _escalate_agent_error(
                tx, step, step_run=None, error=f"the step did not finish after {case.step_attempt} attempts"
            )
            tx.flush()
            return 0
        case.step_attempt += 1
        case.lease_owner = token
        case.lease_expires_at = now + timedelta(seconds=_lease_seconds())
        case.save(update_fields=["step_attempt", "lease_owner", "lease_expires_at", "updated_at"])
        tx.flush()
    return case.step_attempt


def _release_lease(case: Case, *, keep_attempt: bool = False) -> None:
    case.lease_owner = ""
    case.lease_expires_at = None
    if not keep_attempt:
        case.step_attempt = 0


def case_view(case: Case) -> dict:
    """The plain view of a case that agents' rules and governance expressions see."""
    return {
        "id": case.pk,
        "reference": case.reference,
        "workflow": case.workflow.key,
        "payload": case.payload,
        "context": case.context,
    }


def _run_steps(case_id: int, token: str, *, careful: bool, budget: int, effects: list[str]) -> tuple[Next, int]:
    """Run the case's consecutive automatic steps in one transaction (one step only when ``careful``). Returns what
    to do next and how many steps were decided; appends the outbox keys owed by committed steps to ``effects``."""
    with transaction.atomic():
        case = Case.objects.select_for_update(of=("self",)).select_related("workflow", "current_step").get(pk=case_id)
        if case.lease_owner != token or case.status != CaseStatus.RUNNING:
            return Next.STOP, 0  # our lease expired and another worker took the case over
        tx = StepTx(case, deliver_inline=engine_setting("DELIVER_INLINE"))
        policies = _PolicyCache()
        done = 0
        while True:
            result = _decide_step(tx, policies)
            done += result is not None
            if result is not None and result is not Next.CONTINUE:
                outcome = result
                break
            if result is None:  # parked: nothing decided
                outcome = Next.STOP
                break
            if case.status != CaseStatus.RUNNING:
                outcome = Next.STOP
                break
            case.step_attempt = 1  # the next step's first attempt, committed with this step
            if careful:
                case.lease_expires_at = timezone.now() + timedelta(seconds=_lease_seconds())
                outcome = Next.CONTINUE
                break
            if done >= budget:  # the per-task step bound: hand on to a fresh task
                _release_lease(case)
                enqueue_advance(case.pk)
                outcome = Next.STOP
                break
        if outcome is Next.STOP and case.lease_owner == token:
            _release_lease(case)
        case.save()
        tx.flush()
        keys = tx.effects
    effects.extend(keys)  # only once the transaction has committed
    return outcome, done


class _PolicyCache:
    """Every agent's current policies, read once per transaction: a step never switches version midway, and a
    published change applies from the next transaction on. A policy narrowed to the step wins over the general one."""

    def __init__(self):
        self._policies = None

    def get(self, agent_key: str, workflow_key: str = "", step_key: str = "") -> PolicySnapshot | None:
        if self._policies is None:
            self._policies = current_policies()
        return self._policies.get(agent_key, workflow_key, step_key)


def _decide_step(tx: StepTx, policies: _PolicyCache) -> Next | None:
    """Decide the case's current step: park it (None), or run the agent, ask governance and apply or escalate
    (CONTINUE), or record an agent failure (RETRY, or STOP once its attempts are spent)."""
    case = tx.case
    step = case.current_step
    stops = engaged_stops(workflow_key=case.workflow.key, agent_key=step.agent_key)
    if stops:
        _park(tx, WaitReason.STOPPED, data={"stops": [f"{s.scope}:{s.target or '*'}" for s in stops], "step": step.key})
        return None
    policy = policies.get(step.agent_key, case.workflow.key, step.key)
    if policy is not None and policy.autonomy == AutonomyLevel.OFF:
        _park(
            tx,
            WaitReason.AGENT_OFF,
            data={"step": step.key, "policy_version": policy.version, "policy_scope": policy.scope},
        )
        return None

    registered = agent_versions.resolve(step.agent_key, case)
    if registered is not None and registered.hold_reason:  # e.g. the agent's daily cost budget is spent
        verdict = Verdict(
            decision="escalate", reasons=(Reason(code=registered.hold_reason, message=registered.hold_message),)
        )
        open_escalation(tx, step, None, None, verdict)
        return Next.STOP
    started_at = timezone.now()
    t0 = time.perf_counter()
    try:
        if registered is None:
            raise AgentFailure(f"no agent is registered under the key '{step.agent_key}'")
        proposal = _call_agent(registered, _agent_context(case, step, policy))
        if proposal.outcome not in step.transitions:
            raise AgentFailure(
                f"outcome '{proposal.outcome}' is not one of this step's outcomes: {', '.join(step.transitions)}"
            )
    except AgentFailure as exc:
        run = _step_run(tx, step, StepRunStatus.FAILED, started_at, t0, registered, error=str(exc))
        tx.audit(
            actor=_agent_actor(registered, step),
            action=AuditAction.STEP_FAILED,
            subject=run,
            data={"step": step.key, "attempt": run.attempt, "error": str(exc)},
        )
        if case.step_attempt >= engine_setting("STEP_MAX_ATTEMPTS"):
            _escalate_agent_error(tx, step, step_run=run, error=str(exc))
            return Next.STOP
        _release_lease(case, keep_attempt=True)
        return Next.RETRY

    verdict = evaluate(policy, proposal, case_view(case))
    if verdict.allowed:  # budgets are consumed in this step's transaction; a spent budget escalates instead
        verdict = budget_consume(policy=policy, proposal=proposal, verdict=verdict)
    status = StepRunStatus.SUCCEEDED if verdict.allowed else StepRunStatus.ESCALATED
    run = _step_run(tx, step, status, started_at, t0, registered, proposal=proposal, verdict=verdict)
    tx.audit(
        actor=_agent_actor(registered, step),
        action=AuditAction.STEP_DECIDED,
        subject=run,
        data={"step": step.key, "attempt": run.attempt, "proposal": proposal.as_dict(), "verdict": verdict.as_dict()},
    )
    if verdict.allowed:
        apply_decision(tx, step, proposal, actor=_agent_actor(registered, step))
        # a sampled share of autonomous decisions gets a post-hoc human review (the case is not held)
        tx.after_runs(
            lambda: qa_review_open(
                policy=policy, case_id=case.pk, step_key=step.key, step_run_id=run.pk, proposal=run.proposal
            )
        )
    else:
        open_escalation(tx, step, run, proposal, verdict)
    return Next.CONTINUE


def _finish(tx: StepTx, result: Next) -> Next:
    tx.flush()
    return result


def _agent_actor(registered, step: Step) -> Actor:
    return Actor.agent(step.agent_key, registered.version if registered else "")


def _agent_context(case: Case, step: Step, policy: PolicySnapshot | None) -> AgentContext:
    return AgentContext(
        case_id=case.pk,
        reference=case.reference,
        workflow_key=case.workflow.key,
        step_key=step.key,
        attempt=case.step_attempt,
        payload=case.payload,
        context=case.context,
        policy=policy,
        instruction=(case.context.get("instructions") or {}).get(step.key, ""),
        lookup=reference_lookup,
        lookup_many=reference_lookup_many,
    )


class _Alarm:
    """Interrupt an agent that runs past its timeout. Signals reach only the main thread (where django-q2 workers
    run tasks); elsewhere the overrun is detected when the agent returns."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = seconds > 0 and threading.current_thread() is threading.main_thread()

    def _fire(self, signum, frame):
        raise AgentTimeout(f"the agent did not answer within {self.seconds:g} s")

    def __enter__(self):
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def _call_agent(registered, ctx: AgentContext) -> Proposal:
    timeout = engine_setting("AGENT_TIMEOUT")
    try:
        # No savepoint around the agent (two round trips per step): agents only read, through ctx lookups. An agent
        # whose own query fails on PostgreSQL aborts the transaction; the task then fails, its lease expires and
        # the attempt is counted like a lost worker, so the step still ends in an agent_error escalation.
        with _Alarm(timeout) as alarm:
            result = registered.fn(ctx)
    except AgentFailure:
        raise
    except ProposalError as exc:
        raise AgentFailure(f"the agent returned an invalid proposal: {exc}") from exc
    except Exception as exc:
        raise AgentFailure(f"the agent raised {type(exc).__name__}: {exc}") from exc
    if timeout > 0 and time.perf_counter() - alarm.t0 > timeout:
        raise AgentTimeout(f"the agent did not answer within {timeout:g} s")
    if isinstance(result, dict):
        try:
            result = Proposal.from_dict(result)
        except (ProposalError, KeyError, TypeError) as exc:
            raise AgentFailure(f"the agent returned an invalid proposal: {exc}") from exc
    if not isinstance(result, Proposal):
        raise AgentFailure(f"the agent returned {type(result).__name__}, not a Proposal")
    return result


def _step_run(tx, step, status, started_at, t0, registered, *, proposal=None, verdict=None, error="") -> StepRun:
    case = tx.case
    return tx.add_run(
        StepRun(
            case=case,
            step=step,
            attempt=case.step_attempt,
            status=status,
            agent_key=step.agent_key,
            agent_version=registered.version if registered else "",
            proposal=proposal.as_dict() if proposal else None,
            verdict=verdict.as_dict() if verdict else None,
            policy_version=verdict.policy_version if verdict else None,
            started_at=started_at,
            finished_at=timezone.now(),
            duration_ms=(time.perf_counter() - t0) * 1000,
            error=error[:2000],
            **agent_versions.charge(registered),
        )
    )


def _park(tx: StepTx, reason: str, *, data: dict) -> None:
    case = tx.case
    case.transition(CaseStatus.WAITING)
    case.wait_reason = reason
    _release_lease(case)  # the attempt was never made
    case.save()
    tx.audit(actor=SYSTEM, action=AuditAction.CASE_PARKED, data={"reason": reason, **data})


def apply_decision(tx: StepTx, step: Step, proposal: Proposal, *, actor: Actor, decided_by: str = "agent") -> None:
    """Carry out an allowed (or human-approved) proposal: merge its data into the context, owe its effect through the
    outbox, and move the case to the step its outcome names — or end the case."""
    case = tx.case
    context = case.context
    context.update(proposal.data)
    context.setdefault("decisions", {})[step.key] = {
        "outcome": proposal.outcome,
        "action": proposal.action,
        "amount": str(proposal.amount) if proposal.amount is not None else None,
        "decided_by": decided_by,
    }
    if step.effect != StepEffect.NONE and proposal.action not in ("", "none"):
        _owe_effect(tx, step, proposal)
    if step.key in (context.get("retry_pending") or {}):
        _clear_retry_pending(tx, step, context["retry_pending"].pop(step.key))

    target = step.transitions[proposal.outcome]
    if target in (TERMINAL_COMPLETE, TERMINAL_REJECT):
        status = CaseStatus.COMPLETED if target == TERMINAL_COMPLETE else CaseStatus.REJECTED
        case.transition(status)
        case.wait_reason = WaitReason.NONE
        case.current_step = None
        case.finished_at = timezone.now()
        tx.audit(
            actor=actor,
            action=AuditAction.CASE_COMPLETED if status == CaseStatus.COMPLETED else AuditAction.CASE_REJECTED,
            data={"last_step": step.key, "outcome": proposal.outcome},
        )
        return
    case.transition(CaseStatus.RUNNING)
    case.wait_reason = WaitReason.NONE
    case.current_step = workflow_steps(case.workflow_id)[target]


def _clear_retry_pending(tx: StepTx, step: Step, escalation_id: int) -> None:
    # portal: a supervisor returned this step to its agent; it has now succeeded, so the retry is no longer pending
    if Escalation.objects.filter(pk=escalation_id, retry_pending=True).update(retry_pending=False):
        tx.audit(
            actor=SYSTEM,
            action=AuditAction.ESCALATION_RETRY_SUCCEEDED,
            subject_type="operations.escalation",
            subject_id=escalation_id,
            subject_label=f"Escalation {escalation_id}",
            data={"step": step.key},
        )


def _owe_effect(tx: StepTx, step: Step, proposal: Proposal) -> None:
    case = tx.case
    kind = OutboxKind.PAYMENT if step.effect == StepEffect.PAYMENT else OutboxKind.MESSAGE
    # The key names the case and the step, never the attempt: a step that runs twice owes its effect once.
    key = f"case-{case.pk}-{step.key}-{kind}"
    payload = {"action": proposal.action, **(proposal.data.get("effect") or {})}
    # delivered by this worker right after the commit; should it die first, the sweeper takes the effect over once a
    # lease period has passed (rather than only once it looks stale)
    due = timezone.now() + timedelta(seconds=_lease_seconds()) if tx.deliver_inline else None
    created = OutboxEntry.objects.bulk_create(
        [
            OutboxEntry(
                idempotency_key=key,
                kind=kind,
                case=case,
                step_key=step.key,
                amount=proposal.amount,
                payload=payload,
                next_attempt_at=due,
            )
        ],
        ignore_conflicts=True,
    )
    if created:
        tx.audit(
            actor=SYSTEM,
            action=AuditAction.EFFECT_QUEUED,
            subject_type="operations.outboxentry",
            subject_id=key,
            subject_label=f"{kind} for {case.reference}",
            data={
                "kind": kind,
                "amount": str(proposal.amount) if proposal.amount is not None else None,
                "idempotency_key": key,
            },
        )
        if tx.deliver_inline:
            tx.effects.append(key)
        else:
            enqueue_delivery(key)


def _queue_for(step: Step, proposal: Proposal | None) -> str:
    if proposal is not None and proposal.action in (step.action_queues or {}):
        return step.action_queues[proposal.action]
    return step.escalation_queue


def _priority(amount: Decimal | None, verdict: Verdict) -> int:
    if verdict.primary_reason in ("agent_error", "policy_error", EFFECT_FAILED_REASON) or (
        amount is not None and amount >= 10000
    ):
        return 1
    return 2


def open_escalation(
    tx: StepTx,
    step: Step,
    run: StepRun | None,
    proposal: Proposal | None,
    verdict: Verdict,
    *,
    amount: Decimal | None = None,
) -> Escalation:
    """Hand the decision to people: the case waits on an escalation in the step's queue. ``amount``: the amount at
    stake when there is no proposal (a failed payment)."""
    case = tx.case
    amount = proposal.amount if proposal is not None else amount
    sla = step.sla_seconds or engine_setting("DEFAULT_SLA_SECONDS")
    escalation = Escalation(
        case=case,
        step=step,
        reason=verdict.primary_reason,
        reasons=[r.as_dict() for r in verdict.reasons],
        proposal=proposal.as_dict() if proposal is not None else None,
        amount=amount,
        queue=_queue_for(step, proposal),
        priority=_priority(amount, verdict),
        sla_deadline=timezone.now() + timedelta(seconds=sla),
    )

    def write():
        escalation.step_run = run  # saved by now: the runs are inserted first
        escalation.save(force_insert=True)

    tx.after_runs(write)
    case.transition(CaseStatus.WAITING)
    case.wait_reason = WaitReason.ESCALATION
    tx.audit(
        actor=SYSTEM,
        action=AuditAction.ESCALATION_OPENED,
        subject=escalation,
        data={
            "step": step.key,
            "reason": escalation.reason,
            "reasons": escalation.reasons,
            "queue": escalation.queue,
            "amount": str(amount) if amount is not None else None,
            "policy_version": verdict.policy_version,
        },
    )
    return escalation


def _escalate_agent_error(tx: StepTx, step: Step, *, step_run: StepRun | None, error: str) -> None:
    case = tx.case
    verdict = Verdict(
        decision="escalate",
        reasons=(
            Reason(
                code="agent_error",
                message=f"The agent failed after {case.step_attempt} attempts: {error}",
                values={"attempts": case.step_attempt},
            ),
        ),
    )
    open_escalation(tx, step, step_run, None, verdict)
    _release_lease(case)
    case.save()
