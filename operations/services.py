"""Writes to operations: submitting cases, resolving escalations, resuming and sweeping. Each validates, changes
state under a transaction, writes its audit events in that transaction and hands work to the workers."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from jsonschema import Draft202012Validator

from audit.actors import SYSTEM, Actor
from audit.models import AuditAction
from audit.services import audit_event, audit_record, audit_record_many
from operations.agents import Proposal, ProposalError
from operations.engine import StepTx, _lease_seconds, apply_decision, engine_setting
from operations.errors import Conflict, ValidationFailed
from operations.models import (
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
from operations.selectors import active_workflow

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


def case_submit(*, workflow_key: str, reference: str, payload: dict, actor: Actor) -> Case:
    """Create a case on the newest active version of ``workflow_key`` and hand it to the workers. Bad input raises
    ``ValidationFailed`` with every field error and stores nothing."""
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
) -> Escalation:
    """Decide an escalation: approve the agent's proposal, amend and approve it, reject, return it to the agent
    (retry, with an instruction) or cancel the case. A note is required. Two people resolving at once: one wins,
    the other gets ``Conflict`` and nothing is applied twice."""
    if resolution not in Resolution.values:
        raise ValidationFailed(f"unknown resolution '{resolution}'", fields={"resolution": "unknown"})
    if not (note or "").strip():
        raise ValidationFailed("a note is required", fields={"note": "required"})
    amount = _amount(amount)
    with transaction.atomic():
        case, escalation = _locked_case_and_escalation(escalation_id)
        if escalation.status != EscalationStatus.OPEN:
            raise Conflict(
                f"this escalation was already {escalation.get_status_display().lower()} by {escalation.resolved_by}"
                if escalation.resolved_by
                else "this escalation is no longer open"
            )
        step = escalation.step
        tx = StepTx(case)
        decided_by = f"human:{actor.label}"
        data: dict[str, Any] = {"resolution": resolution, "note": note, "step": step.key}

        if resolution in (Resolution.APPROVE, Resolution.AMEND):
            proposal = _approved_proposal(escalation, resolution, amount=amount, outcome=outcome)
            if proposal.outcome not in step.transitions:
                raise ValidationFailed(
                    f"'{proposal.outcome}' is not an outcome of step {step.key}", fields={"outcome": "unknown outcome"}
                )
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
        else:  # cancel the case
            case.transition(CaseStatus.CANCELLED)
            case.current_step, case.finished_at, case.wait_reason = None, timezone.now(), WaitReason.NONE
            tx.audit(actor=actor, action=AuditAction.CASE_CANCELLED, data={"note": note})

        escalation.transition(EscalationStatus.RESOLVED)
        escalation.resolution = resolution
        escalation.resolution_note = note
        escalation.resolution_data = {k: v for k, v in data.items() if k not in ("note", "resolution")}
        escalation.resolved_by = actor.label
        escalation.resolved_at = timezone.now()
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
    return len(cases)


def outbox_deliver(*, idempotency_key: str, now=None) -> OutboxEntry | None:
    """Deliver an owed effect once. Payments go to the payment gateway when one is configured (keyed by the same
    idempotency key, so retries pay once), else they are settled into the ledger (the outbox row is the ledger
    entry); messages go out through Django's email backend (at-least-once: a crash between sending and committing
    sends the letter again). A failed attempt is retried with a doubling backoff by the sweeper; once the retry
    window has passed, the entry is marked failed and needs a person's attention (``effect.failed`` in the case's
    audit trail, the ``selfops.alerts`` log, the admin's "needs attention" filter)."""
    from django.core.mail import send_mail

    from operations.gateway import GatewayError, gateway_url, pay

    with transaction.atomic():
        entry = (
            OutboxEntry.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("case")
            .filter(idempotency_key=idempotency_key, status=OutboxStatus.PENDING)
            .first()
        )
        if entry is None:
            return None
        now = now or timezone.now()
        entry.attempts += 1
        answer: dict = {}
        try:
            if entry.kind == OutboxKind.MESSAGE:
                letter = entry.payload
                send_mail(letter.get("subject", "Your claim"), letter.get("body", ""), None, [letter["to"]])
            elif entry.kind == OutboxKind.PAYMENT and gateway_url():
                answer = pay(
                    idempotency_key=entry.idempotency_key,
                    amount=entry.amount,
                    reference=entry.case.reference,
                    payload=entry.payload,
                )
        except Exception as exc:
            retryable = exc.retryable if isinstance(exc, GatewayError) else True
            _outbox_failed(entry, error=f"{type(exc).__name__}: {exc}", retryable=retryable, now=now)
            return entry
        entry.status = OutboxStatus.DELIVERED
        entry.delivered_at = now
        entry.next_attempt_at = None
        entry.save()
        audit_record(
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
    return entry


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
    if retryable and next_attempt <= entry.created_at + window:
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
    logging.getLogger("selfops.alerts").error(
        "%s: %s for case %s failed after %s attempts: %s",
        reason,
        entry.kind,
        entry.case.reference,
        entry.attempts,
        entry.last_error,
        extra={"alert": reason, "idempotency_key": entry.idempotency_key},
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
