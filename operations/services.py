"""Writes to operations: submitting cases, resolving escalations, resuming and sweeping. Each validates, changes
state under a transaction, writes its audit events in that transaction and hands work to the workers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from jsonschema import Draft202012Validator

from audit.actors import SYSTEM, Actor
from audit.models import AuditAction
from audit.services import audit_event, audit_record, audit_record_many
from governance.services import decision_record_agreement
from operations.agents import Proposal, ProposalError
from operations.engine import StepTx, _lease_seconds, apply_decision, engine_setting
from operations.errors import Conflict, NotAllowed, ValidationFailed
from operations.models import (
    EFFECT_FAILED_REASON,
    Case,
    CaseStatus,
    Escalation,
    EscalationStatus,
    OutboxEntry,
    OutboxKind,
    OutboxStatus,
    Resolution,
    Step,
    WaitReason,
    Workflow,
    WorkflowStatus,
)
from operations.queue import enqueue_advance, enqueue_delivery
from operations.selectors import active_workflow, forget_active_workflow

MAX_PAYLOAD_BYTES = 256 * 1024
_validators: dict[int, Draft202012Validator] = {}


def payload_errors(workflow: Workflow, payload: Any) -> dict[str, str]:
    """Every field error of ``payload`` against the workflow's JSON Schema, by dotted path ("" for the root)."""
    if not isinstance(payload, dict):
        return {"payload": "must be a JSON object"}
    validator = _validators.get(workflow.pk)
    if validator is None:
        validator = _validators[workflow.pk] = Draft202012Validator(workflow.payload_schema or {})
    errors: dict[str, str] = {}
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "payload"
        errors.setdefault(path, error.message)
    return errors


def _check_payload_size(payload: Any) -> None:
    """Refuse a payload that is not plain JSON (NaN and Infinity included: PostgreSQL would refuse them later) or
    that is larger than MAX_PAYLOAD_BYTES once serialised."""
    try:
        size = len(json.dumps(payload, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"the payload is not plain JSON: {exc}", fields={"payload": "not JSON"}) from exc
    except RecursionError as exc:
        raise ValidationFailed("the payload is nested too deeply", fields={"payload": "too deep"}) from exc
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationFailed(
            f"the payload is {size:,} bytes; at most {MAX_PAYLOAD_BYTES:,} are accepted",
            fields={"payload": "too large"},
        )


def case_submit(*, workflow_key: str, reference: str, payload: dict, actor: Actor, submitted_by_client=None) -> Case:
    """Create a case on the newest active version of ``workflow_key`` and hand it to the workers. Bad input raises
    ``ValidationFailed`` with every field error and stores nothing. ``submitted_by_client`` (an ``ApiClient``) is
    the only client that will see the case."""
    workflow = active_workflow(workflow_key) if isinstance(workflow_key, str) and workflow_key else None
    if workflow is None:
        raise ValidationFailed(f"unknown or inactive workflow '{workflow_key}'", fields={"workflow": "unknown"})
    reference = reference.strip() if isinstance(reference, str) else ""
    if not reference or len(reference) > 100:
        raise ValidationFailed("a reference of 1 to 100 characters is required", fields={"reference": "required"})
    _check_payload_size(payload)
    if errors := payload_errors(workflow, payload):
        raise ValidationFailed("the payload does not match the workflow's schema", fields=errors)
    if workflow.first_step_id is None:
        raise ValidationFailed(f"workflow '{workflow_key}' has no steps", fields={"workflow": "has no steps"})
    try:
        with transaction.atomic():
            case = Case.objects.create(
                workflow=workflow,
                reference=reference,
                payload=payload,
                current_step_id=workflow.first_step_id,
                submitted_by=actor.label,
                submitted_by_client=submitted_by_client,
            )
            audit_record(
                actor=actor,
                action=AuditAction.CASE_SUBMITTED,
                subject=case,
                case_id=case.pk,
                data={"workflow": workflow.key, "workflow_version": workflow.version},
            )
            enqueue_advance(case.pk)
    except IntegrityError as exc:
        raise Conflict(f"a case with reference '{reference}' already exists", fields={"reference": "taken"}) from exc
    return case


def _locked_case_and_escalation(escalation_id: int) -> tuple[Case, Escalation]:
    # Lock order: the case row first, then its escalation (STYLE.md, "Locks in one place").
    case_id = Escalation.objects.filter(pk=escalation_id).values_list("case_id", flat=True).first()
    if case_id is None:
        raise Escalation.DoesNotExist(f"no escalation {escalation_id}")
    case = Case.objects.select_for_update(of=("self",)).select_related("workflow", "current_step").get(pk=case_id)
    escalation = Escalation.objects.select_for_update(of=("self",)).select_related("step").get(pk=escalation_id)
    return case, escalation


def _amount(value) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValidationFailed(f"amount {value!r} is not a number", fields={"amount": "not a number"}) from exc
    if not amount.is_finite() or amount < 0:
        raise ValidationFailed("amount must be zero or more", fields={"amount": "must be zero or more"})
    return amount


def escalation_resolve(
    *,
    escalation_id: int,
    actor: Actor,
    resolution: str,
    note: str,
    amount: Any = None,
    outcome: str = "",
    instruction: str = "",
    reason_code: str = "",
) -> Escalation:
    """Decide an escalation: approve the agent's proposal, amend and approve it, reject, return it to the agent
    (retry, with an instruction) or cancel the case. A note is required, a reason code from the resolution's list is
    stored. Approving an amount above the four-eyes threshold (or above the approver's authority) records a pending
    approval; a second, different person completes it. Two people resolving at once: one wins, the other gets
    ``Conflict`` and nothing is applied twice."""
    if resolution not in Resolution.values:
        raise ValidationFailed(f"unknown resolution '{resolution}'", fields={"resolution": "unknown"})
    if not (note or "").strip():
        raise ValidationFailed("a note is required", fields={"note": "required"})
    # --- portal: reason code and the acting user's rights ------------------------------------------------------
    reason_code = _reason_code(resolution, reason_code)
    user = _acting_user(actor) if actor.kind == "user" else None
    # ------------------------------------------------------------------------------------------------------------
    amount = _amount(amount)
    with transaction.atomic():
        case, escalation = _locked_case_and_escalation(escalation_id)
        if escalation.status != EscalationStatus.OPEN:
            raise Conflict(
                f"this escalation was already {escalation.get_status_display().lower()} by {escalation.resolved_by}"
                if escalation.resolved_by
                else "this escalation is no longer open"
            )
        # --- portal: scope and claims -----------------------------------------------------------------------------
        if user is not None:
            _check_may_act_on(user, escalation)
        holder = (escalation.claimed_by_id, escalation.claimed_by_client_id)
        me = (user.pk if user is not None else None, int(actor.id) if actor.kind == "api_client" else None)
        if any(holder) and holder != me:
            claimant = escalation.claimed_by or escalation.claimed_by_client
            raise Conflict(f"this escalation is claimed by {claimant}; ask them or a senior to release it")
        # -----------------------------------------------------------------------------------------------------------
        step = escalation.step
        tx = StepTx(case)
        decided_by = f"human:{actor.label}"
        data: dict[str, Any] = {"resolution": resolution, "note": note, "step": step.key}
        if reason_code:
            data["reason_code"] = reason_code

        if escalation.reason == EFFECT_FAILED_REASON:  # a payment or letter that failed for good
            _effect_resolve(tx, escalation, resolution, actor=actor, data=data)
        elif resolution in (Resolution.APPROVE, Resolution.AMEND):
            proposal = _approved_proposal(escalation, resolution, amount=amount, outcome=outcome)
            if proposal.outcome not in step.transitions:
                raise ValidationFailed(
                    f"'{proposal.outcome}' is not an outcome of step {step.key}", fields={"outcome": "unknown outcome"}
                )
            # --- portal: four-eyes ------------------------------------------------------------------------------
            proposal, approvers = _four_eyes(escalation, resolution, proposal, actor=actor, user=user)
            if approvers is None:  # first of two approvals: recorded, the escalation stays open
                escalation.pending_approval = {
                    "by_kind": actor.kind,
                    "by_id": actor.id,
                    "by": actor.label,
                    "at": timezone.now().isoformat(),
                    "resolution": resolution,
                    "reason_code": reason_code,
                    "note": note,
                    "proposal": proposal.as_dict(),
                }
                escalation.pending_approver = user
                escalation.claimed_by, escalation.claimed_at = None, None  # free for the second person
                escalation.save()
                tx.audit(
                    actor=actor,
                    action=AuditAction.ESCALATION_APPROVAL_PENDING,
                    subject=escalation,
                    data={**data, "proposal": proposal.as_dict()},
                )
                tx.flush()
                return escalation
            if len(approvers) > 1:
                data["approvers"] = approvers
            # ----------------------------------------------------------------------------------------------------
            data["proposal"] = proposal.as_dict()
            apply_decision(tx, step, proposal, actor=actor, decided_by=decided_by)
        elif resolution == Resolution.REJECT:
            if step.reject_outcome:
                proposal = Proposal(outcome=step.reject_outcome, action="deny", rationale=note)
                apply_decision(tx, step, proposal, actor=actor, decided_by=decided_by)
            else:
                case.transition(CaseStatus.REJECTED)
                case.current_step, case.finished_at, case.wait_reason = None, timezone.now(), WaitReason.NONE
                tx.audit(actor=actor, action=AuditAction.CASE_REJECTED, data={"last_step": step.key, "note": note})
        elif resolution == Resolution.RETRY:
            case.transition(CaseStatus.RUNNING)
            case.wait_reason = WaitReason.NONE
            case.step_attempt = 0
            if instruction:
                case.context.setdefault("instructions", {})[step.key] = instruction
                data["instruction"] = instruction
            # --- portal: the retry stays visible until the step succeeds (engine.apply_decision clears it) ------
            escalation.retry_pending = True
            case.context.setdefault("retry_pending", {})[step.key] = escalation.pk
            # ----------------------------------------------------------------------------------------------------
        else:  # cancel the case
            case.transition(CaseStatus.CANCELLED)
            case.current_step, case.finished_at, case.wait_reason = None, timezone.now(), WaitReason.NONE
            tx.audit(actor=actor, action=AuditAction.CASE_CANCELLED, data={"note": note})
        # --- portal: a case that ends here owes no pending retry -------------------------------------------------
        if not case.is_open and case.context.get("retry_pending"):
            Escalation.objects.filter(case=case, retry_pending=True).update(retry_pending=False)
            case.context.pop("retry_pending", None)
        # -----------------------------------------------------------------------------------------------------------

        data.update(
            decision_record_agreement(
                agent_key=step.agent_key,
                escalation_id=escalation.pk,
                case_id=case.pk,
                reasons=escalation.reasons,
                proposal=escalation.proposal,
                resolution=resolution,
                decision=data.get("proposal"),
                reject_outcome=step.reject_outcome,
                actor=actor,
            )
        )
        escalation.transition(EscalationStatus.RESOLVED)
        escalation.resolution = resolution
        escalation.resolution_note = note
        escalation.resolution_data = {k: v for k, v in data.items() if k not in ("note", "resolution")}
        escalation.resolved_by = actor.label
        escalation.resolved_at = timezone.now()
        escalation.reason_code = reason_code
        escalation.save()
        case.save()
        tx.audit(actor=actor, action=AuditAction.ESCALATION_RESOLVED, subject=escalation, data=data)
        tx.flush()
        if case.status == CaseStatus.RUNNING:
            enqueue_advance(case.pk)
    return escalation


def _approved_proposal(escalation: Escalation, resolution: str, *, amount, outcome: str) -> Proposal:
    original = escalation.proposal
    if resolution == Resolution.APPROVE:
        if not original:
            raise ValidationFailed(
                "the agent made no proposal to approve: amend with an outcome, retry or reject",
                fields={"resolution": "nothing to approve"},
            )
        return Proposal.from_dict(original)
    if not original and not outcome:
        raise ValidationFailed("an amendment needs an outcome", fields={"outcome": "required"})
    base = dict(original or {"action": "", "confidence": 1.0, "data": {}})
    if outcome:
        base["outcome"] = outcome
    if amount is not None:
        base["amount"] = str(amount)
    base["confidence"] = 1.0
    try:
        return Proposal.from_dict(base)
    except ProposalError as exc:
        raise ValidationFailed(str(exc)) from exc


def cases_resume_parked(*, reason: str = WaitReason.STOPPED, actor: Actor = SYSTEM, limit: int | None = None) -> int:
    """Put cases parked for ``reason`` back to running and enqueue them; the engine re-checks the stops."""
    resumed = 0
    with transaction.atomic():
        cases = list(
            Case.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=CaseStatus.WAITING, wait_reason=reason)
            .order_by("pk")[:limit]
        )
        events = []
        for case in cases:
            case.transition(CaseStatus.RUNNING)
            case.wait_reason = WaitReason.NONE
            events.append(
                audit_event(
                    actor=actor, action=AuditAction.CASE_RESUMED, subject=case, case_id=case.pk, data={"was": reason}
                )
            )
        Case.objects.bulk_update(cases, ["status", "wait_reason"])
        audit_record_many(events)
        for case in cases:
            enqueue_advance(case.pk)
        resumed = len(cases)
    return resumed


def cases_sweep(*, now=None, limit: int = 1000) -> int:
    """Re-enqueue running cases that nobody is advancing: a lease that expired (the worker died) or no lease and no
    progress for a while (a task lost between commit and enqueue on Redis, say)."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=engine_setting("SWEEP_STALE_AFTER"))
    # A case re-enqueued here is stamped (updated_at) and left alone for a lease period (expired lease) or a stale
    # period (no lease): its task may simply be waiting in a long queue, and re-enqueueing it at every sweep would
    # grow that queue faster than the workers drain it.
    recently = now - timedelta(seconds=_lease_seconds())
    with transaction.atomic():
        cases = list(
            Case.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=CaseStatus.RUNNING)
            .filter(Q(lease_expires_at__lt=now, updated_at__lt=recently) | Q(lease_owner="", updated_at__lt=stale))
            .order_by("pk")[:limit]
        )
        Case.objects.filter(pk__in=[c.pk for c in cases]).update(updated_at=now)
        audit_record_many(
            audit_event(
                actor=SYSTEM,
                action=AuditAction.CASE_REQUEUED,
                subject=c,
                case_id=c.pk,
                data={"lease_expired": bool(c.lease_owner), "step_attempt": c.step_attempt},
            )
            for c in cases
        )
        for case in cases:
            enqueue_advance(case.pk)
        # owed effects not delivered yet: due after a backoff, or never handed over (lost between commit and enqueue)
        due = list(
            OutboxEntry.objects.filter(status=OutboxStatus.PENDING)
            .filter(Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True, created_at__lt=stale))
            .values_list("pk", "idempotency_key")[:limit]
        )
        # not again at the next sweep: a delivery that is merely slow is not flooded with duplicate tasks
        OutboxEntry.objects.filter(pk__in=[pk for pk, _ in due]).update(
            next_attempt_at=now + timedelta(seconds=engine_setting("SWEEP_STALE_AFTER"))
        )
        for _, key in due:
            enqueue_delivery(key)
    effects_escalate_owed(limit=limit)
    return len(cases)


def outbox_deliver(*, idempotency_key: str, now=None) -> OutboxEntry | None:
    """Deliver one owed effect once (see ``outbox_deliver_many``); None if it is not pending."""
    delivered = outbox_deliver_many(keys=[idempotency_key], now=now)
    return delivered[0] if delivered else None


def outbox_deliver_many(*, keys: list[str], now=None) -> list[OutboxEntry]:
    """Deliver owed effects once each, in one transaction. Payments go to the payment gateway when one is configured
    (keyed by the same idempotency key, so retries pay once), else they are settled into the ledger (the outbox row
    is the ledger entry); messages go out through Django's email backend (at-least-once: a crash between sending
    and committing sends the letter again). A failed attempt is retried with a doubling backoff by the sweeper; once
    the retry window has passed, the entry is marked failed and needs a person's attention (``effect.failed`` in the
    case's audit trail, the ``selfops.alerts`` log, the admin's "needs attention" filter). Entries another worker is
    delivering are skipped."""
    from operations.gateway import GatewayError

    with transaction.atomic():
        entries = list(
            OutboxEntry.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("case")
            .filter(idempotency_key__in=keys, status=OutboxStatus.PENDING)
            .order_by("pk")
        )
        now = now or timezone.now()
        delivered, events = [], []
        for entry in entries:
            entry.attempts += 1
            try:
                answer = _deliver_entry(entry)
            except Exception as exc:
                retryable = exc.retryable if isinstance(exc, GatewayError) else True
                _outbox_failed(entry, error=f"{type(exc).__name__}: {exc}", retryable=retryable, now=now)
                continue
            entry.status, entry.delivered_at, entry.next_attempt_at = OutboxStatus.DELIVERED, now, None
            delivered.append(entry)
            if entry.escalation_id is not None:
                events.extend(_effect_retry_succeeded(entry))
            events.append(
                audit_event(
                    actor=SYSTEM,
                    action=AuditAction.EFFECT_DELIVERED,
                    subject_type="operations.outboxentry",
                    subject_id=entry.idempotency_key,
                    subject_label=f"{entry.kind} for {entry.case.reference}",
                    case_id=entry.case_id,
                    data={
                        "kind": entry.kind,
                        "amount": str(entry.amount) if entry.amount is not None else None,
                        "attempts": entry.attempts,
                        "gateway_reference": str(answer.get("id", ""))[:100] if isinstance(answer, dict) else "",
                    },
                )
            )
        OutboxEntry.objects.bulk_update(delivered, ["attempts", "status", "delivered_at", "next_attempt_at"])
        audit_record_many(events)
    return entries


def _effect_retry_succeeded(entry: OutboxEntry) -> list:
    # a supervisor retried this effect after its escalation; it is delivered now, so the retry is no longer pending
    if not Escalation.objects.filter(pk=entry.escalation_id, retry_pending=True).update(retry_pending=False):
        return []
    return [
        audit_event(
            actor=SYSTEM,
            action=AuditAction.ESCALATION_RETRY_SUCCEEDED,
            subject_type="operations.escalation",
            subject_id=entry.escalation_id,
            subject_label=f"Escalation {entry.escalation_id}",
            case_id=entry.case_id,
            data={"step": entry.step_key, "idempotency_key": entry.idempotency_key},
        )
    ]


def _deliver_entry(entry: OutboxEntry) -> dict:
    """Carry out one effect; raise on failure. Returns the gateway's answer for a payment sent to one."""
    from django.core.mail import send_mail

    from operations.gateway import gateway_url, pay

    if entry.kind == OutboxKind.MESSAGE:
        letter = entry.payload
        send_mail(letter.get("subject", "Your claim"), letter.get("body", ""), None, [letter["to"]])
    elif entry.kind == OutboxKind.PAYMENT and gateway_url():
        return pay(
            idempotency_key=entry.idempotency_key,
            amount=entry.amount,
            reference=entry.case.reference,
            payload=entry.payload,
        )
    return {}


def _outbox_failed(entry: OutboxEntry, *, error: str, retryable: bool, now) -> None:
    import logging

    entry.last_error = error[:2000]
    window = timedelta(seconds=engine_setting("OUTBOX_RETRY_WINDOW"))
    backoff = engine_setting("OUTBOX_RETRY_BACKOFF") * (2 ** (entry.attempts - 1))
    next_attempt = now + timedelta(seconds=min(backoff, 3600))
    subject = {
        "subject_type": "operations.outboxentry",
        "subject_id": entry.idempotency_key,
        "subject_label": f"{entry.kind} for {entry.case.reference}",
        "case_id": entry.case_id,
    }
    data = {"kind": entry.kind, "attempts": entry.attempts, "error": entry.last_error}
    if retryable and next_attempt <= (entry.retry_from or entry.created_at) + window:
        entry.next_attempt_at = next_attempt
        entry.save()
        audit_record(
            actor=SYSTEM, action=AuditAction.EFFECT_RETRY, data={**data, "next_attempt_at": next_attempt}, **subject
        )
        return
    entry.status = OutboxStatus.FAILED
    entry.needs_attention = True
    entry.next_attempt_at = None
    entry.save()
    reason = f"{entry.kind}_failed"
    audit_record(actor=SYSTEM, action=AuditAction.EFFECT_FAILED, data={**data, "reason": reason}, **subject)
    escalation = effect_escalate(entry=entry)
    logging.getLogger("selfops.alerts").error(
        "%s: %s for case %s failed after %s attempts: %s%s",
        reason,
        entry.kind,
        entry.case.reference,
        entry.attempts,
        entry.last_error,
        f" (escalation {escalation.pk})" if escalation is not None else "",
        extra={"alert": reason, "idempotency_key": entry.idempotency_key},
    )


def _effect_words(entry: OutboxEntry) -> str:
    if entry.kind == OutboxKind.PAYMENT:
        amount = f" of {entry.amount:,.2f}" if entry.amount is not None else ""
        return f"The payment{amount} could not be made"
    return "The letter could not be sent"


def effect_escalate(*, entry: OutboxEntry) -> Escalation | None:
    """Open an ``effect_failed`` escalation for an owed effect that failed for good, in the caller's transaction (the
    one that marks it failed): the case waits on it, in the queue of the step that owed the effect, with the outside
    system's last error in words, the amount and the idempotency key. A case that had finished or was parked waits
    again; what it was is kept in the reason, and the supervisor's decision restores or ends it
    (``escalation_resolve``: retry hands the same entry back with the same key, reject or cancel closes it unpaid).
    Returns None when nothing is opened now: the case was cancelled (nothing is owed to it) or already waits on
    another escalation (the sweeper opens this one once that is decided)."""
    from governance.evaluation import Reason, Verdict
    from operations.engine import _release_lease, open_escalation

    # the case row before its escalations (STYLE.md); the entry is locked by our caller
    case = Case.objects.select_for_update(of=("self",)).select_related("workflow", "current_step").get(pk=entry.case_id)
    if case.status in (CaseStatus.CANCELLED, CaseStatus.FAILED):
        return None
    if Escalation.objects.filter(case=case, status=EscalationStatus.OPEN).exists():
        return None
    step = Step.objects.filter(workflow_id=case.workflow_id, key=entry.step_key).first()
    if step is None:
        return None
    was = {
        "status": case.status,
        "wait_reason": case.wait_reason,
        "finished_at": case.finished_at.isoformat() if case.finished_at else None,
    }
    message = (
        f"{_effect_words(entry)} after {entry.attempts} attempt(s): {entry.last_error}. "
        f"It was approved already: retry sends the same {entry.kind} again (idempotency key {entry.idempotency_key}); "
        "reject or cancel closes it without it."
    )
    reason = Reason(
        code=EFFECT_FAILED_REASON,
        message=message,
        values={
            "idempotency_key": entry.idempotency_key,
            "kind": entry.kind,
            "amount": str(entry.amount) if entry.amount is not None else None,
            "attempts": entry.attempts,
            "last_error": entry.last_error,
            "case_was": was,
        },
    )
    tx = StepTx(case)
    if case.status == CaseStatus.RUNNING:
        _release_lease(case)  # a worker holding the lease stops at its next step: the case no longer runs
    case.finished_at = None
    escalation = open_escalation(
        tx, step, None, None, Verdict(decision="escalate", reasons=(reason,)), amount=entry.amount
    )

    def link():
        entry.escalation = escalation
        entry.save(update_fields=["escalation"])

    tx.after_runs(link)
    case.save()
    tx.flush()
    return escalation


def effects_escalate_owed(*, limit: int = 100) -> int:
    """Open the escalations that failed effects still owe: their case was waiting on another escalation when they
    failed, and that one has been decided since. Run by the sweeper."""
    owed = list(
        OutboxEntry.objects.filter(status=OutboxStatus.FAILED, needs_attention=True)
        .exclude(escalation__status=EscalationStatus.OPEN)
        .exclude(case__status__in=[CaseStatus.CANCELLED, CaseStatus.FAILED])
        .exclude(case__escalations__status=EscalationStatus.OPEN)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    opened = 0
    for pk in owed:
        with transaction.atomic():
            entry = (
                OutboxEntry.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("case")
                .filter(pk=pk, status=OutboxStatus.FAILED, needs_attention=True)
                .first()
            )
            opened += entry is not None and effect_escalate(entry=entry) is not None
    return opened


def _effect_resolve(tx: StepTx, escalation: Escalation, resolution: str, *, actor: Actor, data: dict) -> None:
    """Decide an ``effect_failed`` escalation (see ``effect_escalate``): the effect was approved already, so there is
    nothing to approve again — retry hands the same outbox entry back for delivery with the same idempotency key (a
    gateway that honours it pays once) and restores the case; reject or cancel closes the entry undelivered and ends
    the case. The escalation of a retry stays visible (``retry_pending``) until the delivery succeeds."""
    case = tx.case
    values = next((r.get("values") or {} for r in escalation.reasons if r.get("code") == EFFECT_FAILED_REASON), {})
    if resolution in (Resolution.APPROVE, Resolution.AMEND):
        raise ValidationFailed(
            f"this {values.get('kind') or 'effect'} was approved already and the outside system did not take it: "
            "retry it (the same one, with the same idempotency key), or reject or cancel to close it without it",
            fields={"resolution": "retry, reject or cancel_case"},
        )
    entry = (
        OutboxEntry.objects.select_for_update(of=("self",))
        .filter(escalation=escalation, status=OutboxStatus.FAILED)
        .first()
    )
    if entry is None:
        raise Conflict("this effect is no longer failed (delivered or closed meanwhile)")
    now = timezone.now()
    subject = {
        "subject_type": "operations.outboxentry",
        "subject_id": entry.idempotency_key,
        "subject_label": f"{entry.kind} for {case.reference}",
    }
    data["idempotency_key"] = entry.idempotency_key
    entry.needs_attention = False
    if resolution == Resolution.RETRY:
        tx.audit(
            actor=actor,
            action=AuditAction.EFFECT_REQUEUED,
            data={"kind": entry.kind, "attempts": entry.attempts, "escalation": escalation.pk},
            **subject,
        )
        # a new retry window, with its own backoff from the start (the attempts so far are in the audit trail)
        entry.status, entry.retry_from, entry.next_attempt_at, entry.attempts = OutboxStatus.PENDING, now, None, 0
        entry.save()
        was = values.get("case_was") or {}
        case.transition(was.get("status") or CaseStatus.WAITING)
        case.wait_reason = was.get("wait_reason") or WaitReason.NONE
        if was.get("finished_at"):
            case.finished_at = datetime.fromisoformat(was["finished_at"])
        escalation.retry_pending = True
        enqueue_delivery(entry.idempotency_key)
        return
    entry.status = OutboxStatus.CANCELLED
    entry.save()
    tx.audit(
        actor=actor,
        action=AuditAction.EFFECT_CANCELLED,
        data={"kind": entry.kind, "attempts": entry.attempts, "escalation": escalation.pk},
        **subject,
    )
    status = CaseStatus.REJECTED if resolution == Resolution.REJECT else CaseStatus.CANCELLED
    case.transition(status)
    case.current_step, case.finished_at, case.wait_reason = None, now, WaitReason.NONE
    case.lease_owner, case.lease_expires_at = "", None
    tx.audit(
        actor=actor,
        action=AuditAction.CASE_REJECTED if status == CaseStatus.REJECTED else AuditAction.CASE_CANCELLED,
        data={"last_step": escalation.step.key, "note": data.get("note", "")},
    )


def workflow_install(*, definition: dict, actor: Actor) -> Workflow:
    """Install a workflow definition (key, name, payload_schema, steps) as a new active version, retiring the older
    ones for new cases; cases in flight keep their version. Installing the same definition again changes nothing."""
    key = definition["key"]
    latest = Workflow.objects.filter(key=key).order_by("-version").first()
    if latest is not None and latest.description == _definition_digest(definition):
        return latest
    steps = definition["steps"]
    keys = {s["key"] for s in steps}
    for s in steps:
        for outcome, target in s["transitions"].items():
            if target not in keys and target not in ("@complete", "@reject"):
                raise ValidationFailed(f"step {s['key']}: outcome '{outcome}' leads to unknown step '{target}'")
    with transaction.atomic():
        workflow = Workflow.objects.create(
            key=key,
            version=(latest.version + 1) if latest else 1,
            name=definition["name"],
            description=_definition_digest(definition),
            payload_schema=definition.get("payload_schema", {}),
            status=WorkflowStatus.ACTIVE,
        )
        created = Step.objects.bulk_create(
            Step(workflow=workflow, position=i, **{k: v for k, v in s.items()}) for i, s in enumerate(steps)
        )
        workflow.first_step = Step.objects.get(workflow=workflow, key=created[0].key)
        workflow.save(update_fields=["first_step"])
        Workflow.objects.filter(key=key, status=WorkflowStatus.ACTIVE).exclude(pk=workflow.pk).update(
            status=WorkflowStatus.RETIRED
        )
        forget_active_workflow(key)  # this process uses the new version at once (a rollback just re-reads)
        audit_record(
            actor=actor,
            action=AuditAction.WORKFLOW_INSTALLED,
            subject=workflow,
            data={"key": key, "version": workflow.version, "steps": [s["key"] for s in steps]},
        )
    return workflow


def _definition_digest(definition: dict) -> str:
    import hashlib
    import json

    return "sha256:" + hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


# --- portal: roles, claiming, four-eyes, reassignment, SLA breaches ------------------------------------------------


def _reason_code(resolution: str, reason_code: str) -> str:
    from operations.resolution_codes import REASON_CODES

    # Empty is accepted here for callers that predate reason codes (the portal form requires one).
    if reason_code and reason_code not in {code for code, _ in REASON_CODES.get(resolution, [])}:
        raise ValidationFailed(
            f"'{reason_code}' is not a reason code for '{resolution}'",
            fields={"reason_code": "not for this resolution"},
        )
    return reason_code


def _acting_user(actor: Actor):
    from django.contrib.auth import get_user_model

    from operations import roles

    user = get_user_model().objects.filter(pk=actor.user_id).first()
    if user is None or not roles.can_act(user):
        raise NotAllowed("you may read escalations but not act on them", fields={"actor": "no acting role"})
    return user


def _check_may_act_on(user, escalation: Escalation) -> None:
    from operations.selectors import escalations_for

    if not escalations_for(user, for_action=True).filter(pk=escalation.pk).exists():
        raise NotAllowed("this escalation is not in one of your queues", fields={"queue": escalation.queue})


def _four_eyes(escalation: Escalation, resolution: str, proposal: Proposal, *, actor: Actor, user):
    """The proposal to apply and who approved it, or ``(proposal, None)`` when this is the first of two approvals.
    Above the four-eyes amount two different people approve; one of them must have the authority for the amount
    (CLAIMS_DOMAIN.md tiers: a supervisor up to 10,000, a senior up to 50,000, above that two people)."""
    from operations import roles

    def limit(u):
        return roles.approval_limit(u) if u is not None else roles.four_eyes_amount()

    pending = escalation.pending_approval or {}
    if pending:
        if (pending.get("by_kind", "user"), pending["by_id"]) == (actor.kind, actor.id):
            raise NotAllowed(
                "you gave the first approval: a second, different person must approve", fields={"actor": "same person"}
            )
        if resolution == Resolution.AMEND:
            pending = {}  # a new amendment replaces the waiting one and needs its own second approval
        else:
            proposal = Proposal.from_dict(pending["proposal"])
    amount = proposal.amount
    if amount is None:
        return proposal, [actor.label]
    mine = limit(user)
    if not pending:
        if amount <= roles.four_eyes_amount() and amount <= mine:
            return proposal, [actor.label]
        return proposal, None
    first = None
    if pending.get("by_kind", "user") == "user":
        from django.contrib.auth import get_user_model

        first = get_user_model().objects.filter(pk=int(pending["by_id"])).first()
    needed = min(amount, roles.senior_limit())
    if max(mine, limit(first)) < needed:
        raise NotAllowed(
            f"{amount:,.2f} needs a senior supervisor's approval (yours goes up to {mine:,.2f})",
            fields={"actor": "authority"},
        )
    return proposal, [pending["by"], actor.label]


def ensure_roles() -> None:
    """Create the role and queue groups (idempotent)."""
    from django.contrib.auth.models import Group

    from operations import roles

    names = list(roles.ROLES) + list(Step.objects.values_list("escalation_queue", flat=True).distinct())
    for queues in Step.objects.values_list("action_queues", flat=True):
        names += list((queues or {}).values())
    for name in dict.fromkeys(names):
        Group.objects.get_or_create(name=name)


def _locked_escalation(escalation_id: int) -> Escalation:
    escalation = Escalation.objects.select_for_update(of=("self",)).filter(pk=escalation_id).first()
    if escalation is None:
        raise Escalation.DoesNotExist(f"no escalation {escalation_id}")
    return escalation


def escalation_claim(*, escalation_id: int, actor: Actor, client=None) -> Escalation:
    """Take an open escalation to work on it: a person (checked against their roles and queues) or an API client
    (``client``; the API has checked its scope and queues). Others see who holds it and cannot resolve it meanwhile;
    claiming what one already holds changes nothing, claiming what someone else holds is a ``Conflict``."""
    user = _acting_user(actor) if client is None else None
    with transaction.atomic():
        escalation = _locked_escalation(escalation_id)
        if user is not None:
            _check_may_act_on(user, escalation)
        if escalation.status != EscalationStatus.OPEN:
            raise Conflict("this escalation is no longer open")
        holder = (escalation.claimed_by_id, escalation.claimed_by_client_id)
        if holder == (getattr(user, "pk", None), getattr(client, "pk", None)):
            return escalation
        if any(holder):
            raise Conflict(
                f"this escalation is already claimed by {escalation.claimed_by or escalation.claimed_by_client}"
            )
        escalation.claimed_by, escalation.claimed_by_client, escalation.claimed_at = user, client, timezone.now()
        escalation.save(update_fields=["claimed_by", "claimed_by_client", "claimed_at"])
        audit_record(
            actor=actor,
            action=AuditAction.ESCALATION_CLAIMED,
            subject=escalation,
            case_id=escalation.case_id,
            data={"queue": escalation.queue},
        )
    return escalation


def escalation_release(*, escalation_id: int, actor: Actor) -> Escalation:
    """Give a claimed escalation back to its queue: the claimant, or a senior supervisor for anyone's claim."""
    from operations import roles

    user = _acting_user(actor)
    with transaction.atomic():
        escalation = _locked_escalation(escalation_id)
        _check_may_act_on(user, escalation)
        if not escalation.claimed_by_id:
            return escalation
        if escalation.claimed_by_id != user.pk and not roles.is_senior(user):
            raise NotAllowed(f"only {escalation.claimed_by} or a senior supervisor may release this claim")
        was = str(escalation.claimed_by)
        escalation.claimed_by, escalation.claimed_at = None, None
        escalation.save(update_fields=["claimed_by", "claimed_at"])
        audit_record(
            actor=actor,
            action=AuditAction.ESCALATION_RELEASED,
            subject=escalation,
            case_id=escalation.case_id,
            data={"was_claimed_by": was},
        )
    return escalation


def escalation_claim_next(*, actor: Actor) -> Escalation | None:
    """Claim the most urgent unclaimed open escalation the user may act on (priority, then deadline). Rows another
    transaction is claiming are skipped, so two supervisors clicking at once get different items."""
    from operations.selectors import escalations_for

    user = _acting_user(actor)
    with transaction.atomic():
        escalation = (
            escalations_for(user, for_action=True)
            .select_related(None)
            .filter(status=EscalationStatus.OPEN, claimed_by__isnull=True)
            .exclude(pending_approver=user)  # they cannot give the second approval themselves
            .order_by("priority", "sla_deadline", "id")
            .select_for_update(skip_locked=True, of=("self",))
            .first()
        )
        if escalation is None:
            return None
        escalation.claimed_by, escalation.claimed_at = user, timezone.now()
        escalation.save(update_fields=["claimed_by", "claimed_at"])
        audit_record(
            actor=actor,
            action=AuditAction.ESCALATION_CLAIMED,
            subject=escalation,
            case_id=escalation.case_id,
            data={"next": True},
        )
    return escalation


def escalations_reassign(
    *, escalation_ids: list[int], actor: Actor, note: str, queue: str = "", assignee=None
) -> list[Escalation]:
    """Move open escalations to another queue and/or hand them to a person (claimed for them). Several at once is
    for senior supervisors; one supervisor may pass on a single item of their own queue."""
    from django.contrib.auth.models import Group

    from operations import roles
    from operations.selectors import escalations_for

    user = _acting_user(actor)
    ids = sorted({int(i) for i in escalation_ids})
    if not ids:
        raise ValidationFailed("choose at least one escalation", fields={"escalations": "required"})
    if len(ids) > 1 and not roles.is_senior(user):
        raise NotAllowed("bulk reassignment is for senior supervisors")
    if not (note or "").strip():
        raise ValidationFailed("a note is required", fields={"note": "required"})
    if not queue and assignee is None:
        raise ValidationFailed("choose a queue or a person", fields={"queue": "required"})
    if queue and not Group.objects.filter(name=queue).exists():
        raise ValidationFailed(f"there is no queue '{queue}'", fields={"queue": "unknown"})
    if assignee is not None and not roles.can_act(assignee):
        raise ValidationFailed(f"{assignee} cannot work escalations", fields={"assignee": "no acting role"})
    with transaction.atomic():
        # lock in pk order (STYLE.md); rows outside the user's queues are not theirs to move
        rows = list(
            escalations_for(user, for_action=True)
            .select_related(None)
            .filter(pk__in=ids, status=EscalationStatus.OPEN)
            .order_by("pk")
            .select_for_update(of=("self",))
        )
        if len(rows) != len(ids):
            raise Conflict("some of these escalations are no longer open or not in your queues; nothing was moved")
        events = []
        for escalation in rows:
            before = {"queue": escalation.queue, "claimed_by": str(escalation.claimed_by or "")}
            if queue:
                escalation.queue = queue
            if assignee is not None:
                if not assignee.is_superuser and escalation.queue not in roles.queue_names(assignee):
                    raise ValidationFailed(
                        f"{assignee} does not work the queue '{escalation.queue}'", fields={"assignee": "wrong queue"}
                    )
                escalation.claimed_by, escalation.claimed_at = assignee, timezone.now()
            else:
                escalation.claimed_by, escalation.claimed_at = None, None
            events.append(
                audit_event(
                    actor=actor,
                    action=AuditAction.ESCALATION_REASSIGNED,
                    subject=escalation,
                    case_id=escalation.case_id,
                    data={
                        "before": before,
                        "queue": escalation.queue,
                        "assignee": str(assignee or ""),
                        "note": note,
                    },
                )
            )
        Escalation.objects.bulk_update(rows, ["queue", "claimed_by", "claimed_at"])
        audit_record_many(events)
    return rows


def escalations_sla_check(*, now=None, limit: int = 1000) -> dict[str, int]:
    """Find open escalations past their SLA deadline: record the breach, raise the priority and e-mail the queue's
    members; after a second threshold move them to the senior supervisors' queue. Safe to run twice."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.mail import send_mail

    from operations import roles

    now = now or timezone.now()
    reassign_before = now - timedelta(seconds=settings.SELFOPS["SLA_REASSIGN_AFTER"])
    with transaction.atomic():
        breached = list(
            Escalation.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("case")
            .filter(status=EscalationStatus.OPEN, sla_breached_at__isnull=True, sla_deadline__lt=now)
            .order_by("sla_deadline", "id")[:limit]
        )
        events = []
        by_queue: dict[str, list[Escalation]] = {}
        for e in breached:
            e.sla_breached_at, e.priority = now, 1
            by_queue.setdefault(e.queue, []).append(e)
            events.append(
                audit_event(
                    actor=SYSTEM,
                    action=AuditAction.ESCALATION_SLA_BREACHED,
                    subject=e,
                    case_id=e.case_id,
                    data={"deadline": e.sla_deadline.isoformat(), "queue": e.queue, "level": "breached"},
                )
            )
        Escalation.objects.bulk_update(breached, ["sla_breached_at", "priority"])

        overdue = list(
            Escalation.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("case")
            .filter(
                status=EscalationStatus.OPEN,
                sla_reassigned_at__isnull=True,
                sla_deadline__lt=reassign_before,
            )
            .exclude(queue=roles.SENIOR_QUEUE)
            .order_by("sla_deadline", "id")[:limit]
        )
        for e in overdue:
            events.append(
                audit_event(
                    actor=SYSTEM,
                    action=AuditAction.ESCALATION_REASSIGNED,
                    subject=e,
                    case_id=e.case_id,
                    data={"before": {"queue": e.queue}, "queue": roles.SENIOR_QUEUE, "note": "SLA breached"},
                )
            )
            e.queue, e.claimed_by, e.claimed_at, e.sla_reassigned_at = roles.SENIOR_QUEUE, None, None, now
            by_queue.setdefault(roles.SENIOR_QUEUE, []).append(e)
        Escalation.objects.bulk_update(overdue, ["queue", "claimed_by", "claimed_at", "sla_reassigned_at"])
        audit_record_many(events)

        mails = []
        for queue, items in by_queue.items():
            to = list(
                get_user_model()
                .objects.filter(groups__name=queue, is_active=True)
                .exclude(email="")
                .values_list("email", flat=True)
            )
            if to:
                lines = [
                    f"#{e.pk} {e.case.reference}: {e.reason}, due {e.sla_deadline:%Y-%m-%d %H:%M} UTC" for e in items
                ]
                mails.append((f"[selfops] {len(items)} escalation(s) past their SLA in {queue}", "\n".join(lines), to))

        def send():
            for subject, body, to in mails:
                send_mail(subject, body, None, to, fail_silently=True)

        transaction.on_commit(send)
    return {"breached": len(breached), "reassigned": len(overdue)}


def case_cancel(*, case_id: int, actor: Actor, reason: str) -> Case:
    """Cancel an open case (running or waiting): its open escalation is cancelled with it and the engine stops at
    its next step. A finished case cannot be cancelled (``TransitionNotAllowed``, 409)."""
    if not (reason or "").strip():
        raise ValidationFailed("a reason is required to cancel a case", fields={"reason": "required"})
    with transaction.atomic():
        # Lock order: the case row first, then its escalations. A worker mid-step holds the case row; we wait for
        # its step to commit, and it stops at the next one because the case is no longer running.
        case = Case.objects.select_for_update(of=("self",)).select_related("workflow").get(pk=case_id)
        tx = StepTx(case)
        case.transition(CaseStatus.CANCELLED)
        case.current_step, case.finished_at, case.wait_reason = None, timezone.now(), WaitReason.NONE
        case.lease_owner, case.lease_expires_at = "", None
        for escalation in Escalation.objects.select_for_update(of=("self",)).filter(
            case=case, status=EscalationStatus.OPEN
        ):
            escalation.transition(EscalationStatus.CANCELLED)
            escalation.resolved_by, escalation.resolved_at = actor.label, timezone.now()
            escalation.resolution_note = reason
            escalation.save()
        case.save()
        tx.audit(actor=actor, action=AuditAction.CASE_CANCELLED, data={"note": reason})
        tx.flush()
    return case
