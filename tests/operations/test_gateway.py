"""Downstream failure: the payment gateway (a real HTTP server on 127.0.0.1) times out or answers 500; the payment is
retried with the same idempotency key after a backoff and succeeds once; past the retry window it is marked failed and
an escalation opens (the case waits on it); a supervisor's retry sends the same payment again with the same key,
reject or cancel closes it unpaid; nothing is paid twice."""

import logging
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations import engine
from operations.errors import ValidationFailed
from operations.models import (
    Case,
    CaseStatus,
    Escalation,
    EscalationStatus,
    OutboxEntry,
    OutboxKind,
    OutboxStatus,
    WaitReason,
)
from operations.services import cases_sweep, escalation_resolve, outbox_deliver
from tests.gateway_server import Gateway
from tests.helpers import senior_user, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def owed_payment(claim_generator, settings) -> OutboxEntry:
    settings.SELFOPS = {
        **settings.SELFOPS,
        "PAYMENT_TIMEOUT": 0.3,
        "OUTBOX_RETRY_BACKOFF": 2,
        "OUTBOX_RETRY_WINDOW": 60,
        "DELIVER_INLINE": False,  # the test delivers the payment itself, step by step
    }
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    # the letter goes out at once, so that the sweeper has nothing else to hand over in these tests
    outbox_deliver(idempotency_key=OutboxEntry.objects.get(case=case, kind=OutboxKind.MESSAGE).idempotency_key)
    return OutboxEntry.objects.get(case=case, kind=OutboxKind.PAYMENT)


def test_a_payment_that_times_out_then_fails_is_retried_with_the_same_key_and_paid_once(owed_payment, settings):
    key = owed_payment.idempotency_key
    with Gateway(["timeout", "500", "ok"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url

        # when the first attempt times out
        t0 = timezone.now()
        entry = outbox_deliver(idempotency_key=key, now=t0)
        # then the payment is still owed, with a backoff before the next attempt, and nothing was paid
        assert (entry.status, entry.attempts) == (OutboxStatus.PENDING, 1)
        assert "did not answer within 0.3 s" in entry.last_error
        assert entry.next_attempt_at == t0 + timedelta(seconds=2)
        # the sweeper does not hand it back before the backoff, and does once it is due
        queued = OrmQ.objects.count()
        cases_sweep(now=t0 + timedelta(seconds=1))
        assert OrmQ.objects.count() == queued
        cases_sweep(now=t0 + timedelta(seconds=3))
        assert OrmQ.objects.count() == queued + 1

        # when the second attempt meets a 500 and the third an answer
        entry = outbox_deliver(idempotency_key=key, now=t0 + timedelta(seconds=3))
        assert (entry.status, entry.attempts, entry.last_error) == (
            OutboxStatus.PENDING,
            2,
            "GatewayError: the gateway answered 500",
        )
        assert entry.next_attempt_at == t0 + timedelta(seconds=3 + 4)  # doubled
        entry = outbox_deliver(idempotency_key=key, now=t0 + timedelta(seconds=8))
        # and a duplicate delivery task arrives afterwards
        assert outbox_deliver(idempotency_key=key) is None

    # then every request carried the same key, the gateway paid once, and the ledger says delivered once
    assert gateway.requests == Counter({key: 3})
    assert list(gateway.paid) == [key]
    assert {b["amount"] for b in gateway.bodies} == {str(owed_payment.amount)}
    entry.refresh_from_db()
    assert (entry.status, entry.attempts) == (OutboxStatus.DELIVERED, 3)
    events = Counter(
        AuditEvent.objects.filter(subject_id=key, subject_type="operations.outboxentry").values_list(
            "action", flat=True
        )
    )
    assert events[AuditAction.EFFECT_DELIVERED] == 1 and events[AuditAction.EFFECT_RETRY] == 2


def test_a_payment_still_failing_after_the_retry_window_is_flagged_for_a_person(owed_payment, settings, caplog):
    key = owed_payment.idempotency_key
    with Gateway(["500"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        t0 = owed_payment.created_at
        # when the gateway fails every attempt, each after its backoff, until the window (60 s) has passed
        with caplog.at_level(logging.ERROR, logger="selfops.alerts"):
            when, attempts = t0, 0
            while (entry := outbox_deliver(idempotency_key=key, now=when)).status == OutboxStatus.PENDING:
                attempts += 1
                assert attempts < 10
                when = entry.next_attempt_at

    # then it was tried 2 s, 4 s, 8 s, 16 s apart and given up once the next try would fall outside the window,
    assert entry.attempts == 5 and gateway.requests[key] == 5 and not gateway.paid
    # marked failed and flagged, in the case's audit trail and in the alert log, and never offered to a worker again
    assert (entry.status, entry.needs_attention) == (OutboxStatus.FAILED, True)
    failed = AuditEvent.objects.get(action=AuditAction.EFFECT_FAILED, subject_id=key)
    assert failed.case_id == owed_payment.case_id and failed.data["reason"] == "payment_failed"
    assert any("payment_failed" in r.getMessage() for r in caplog.records)
    # and an escalation opened with it, in the payment step's queue: the gateway's last error in words, the amount
    # and the idempotency key; the (completed) case waits on it
    escalation = Escalation.objects.get(case=owed_payment.case, status=EscalationStatus.OPEN)
    assert entry.escalation == escalation
    assert (escalation.reason, escalation.step.key, escalation.queue) == ("effect_failed", "payment", "Claims handlers")
    assert escalation.amount == owed_payment.amount and escalation.priority == 1
    [reason] = escalation.reasons
    assert "could not be made after 5 attempt(s): GatewayError: the gateway answered 500" in reason["message"]
    assert f"{owed_payment.amount:,.2f}" in reason["message"] and key in reason["message"]
    assert reason["values"]["idempotency_key"] == key and reason["values"]["case_was"]["status"] == "completed"
    case = Case.objects.get(pk=owed_payment.case_id)
    assert (case.status, case.wait_reason, case.finished_at) == (CaseStatus.WAITING, WaitReason.ESCALATION, None)
    opened = AuditEvent.objects.get(action=AuditAction.ESCALATION_OPENED, subject_id=str(escalation.pk))
    assert opened.case_id == case.pk and opened.data["reason"] == "effect_failed"
    queued = OrmQ.objects.count()
    cases_sweep(now=t0 + timedelta(days=1))
    assert OrmQ.objects.count() == queued
    assert Escalation.objects.filter(case=case).count() == 1  # the sweeper opens no second one


def test_a_payment_the_gateway_refuses_is_not_retried(owed_payment, settings):
    with Gateway(["400"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        entry = outbox_deliver(idempotency_key=owed_payment.idempotency_key)

    assert (entry.status, entry.needs_attention, entry.attempts) == (OutboxStatus.FAILED, True, 1)
    assert "answered 400" in entry.last_error
    assert Escalation.objects.get(case=owed_payment.case, status=EscalationStatus.OPEN).reason == "effect_failed"


def test_without_a_gateway_payments_are_settled_in_the_ledger(owed_payment, settings):
    settings.SELFOPS_PAYMENT_GATEWAY_URL = ""

    entry = outbox_deliver(idempotency_key=owed_payment.idempotency_key)

    assert (entry.status, entry.attempts) == (OutboxStatus.DELIVERED, 1)


def _fail_past_the_window(entry: OutboxEntry, gateway: "Gateway") -> OutboxEntry:
    """Deliver ``entry`` at each of its due times while the gateway fails, until its retry window has run out."""
    when = entry.retry_from or entry.created_at
    for _ in range(10):
        entry = outbox_deliver(idempotency_key=entry.idempotency_key, now=when)
        if entry.status != OutboxStatus.PENDING:
            return entry
        when = entry.next_attempt_at
    raise AssertionError("the retry window never ran out")


@pytest.fixture
def supervisor(db):
    return senior_user("sam")


def test_a_supervisor_retry_after_the_gateway_is_back_pays_the_same_payment_exactly_once(
    claim_generator, settings, supervisor
):
    settings.SELFOPS = {
        **settings.SELFOPS,
        "PAYMENT_TIMEOUT": 0.3,
        "OUTBOX_RETRY_BACKOFF": 2,
        "OUTBOX_RETRY_WINDOW": 60,
    }
    with Gateway(["timeout", "500"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        # given a claim the engine approves and pays at once (inline delivery), while the gateway is down
        case = submit(claim_generator.claim("straight_through"))
        engine.advance_case(case.pk)
        entry = OutboxEntry.objects.get(case=case, kind=OutboxKind.PAYMENT)
        key = entry.idempotency_key
        assert (entry.status, entry.attempts, gateway.requests[key]) == (OutboxStatus.PENDING, 1, 1)
        # and it stays down past the retry window: an escalation opens and the case waits, nothing paid
        entry = _fail_past_the_window(entry, gateway)
        assert entry.status == OutboxStatus.FAILED and not gateway.paid
        escalation = Escalation.objects.get(case=case, status=EscalationStatus.OPEN, reason="effect_failed")
        assert Case.objects.get(pk=case.pk).status == CaseStatus.WAITING
        failures = gateway.requests[key]

        # when the gateway is back and a supervisor returns the payment for another try
        gateway.script = ["ok"]
        resolved = escalation_resolve(
            escalation_id=escalation.pk,
            actor=Actor.user(supervisor),
            resolution="retry",
            note="the gateway is back",
            reason_code="system_recovered",
        )
        # then the same entry is owed again (same key, a new window), the case is as it was, the retry is pending
        entry.refresh_from_db()
        assert (entry.status, entry.needs_attention, entry.idempotency_key) == (OutboxStatus.PENDING, False, key)
        assert entry.retry_from is not None and resolved.retry_pending
        assert Case.objects.get(pk=case.pk).status == CaseStatus.COMPLETED
        # when the delivery task runs, and runs again (at-least-once), and the sweeper comes by
        delivered = outbox_deliver(idempotency_key=key)
        assert outbox_deliver(idempotency_key=key) is None
        cases_sweep(now=timezone.now() + timedelta(days=1))

    # then the gateway saw one more request with the same key and paid it once; one payment in the ledger
    assert delivered.status == OutboxStatus.DELIVERED
    assert gateway.requests == Counter({key: failures + 1}) and list(gateway.paid) == [key]
    assert OutboxEntry.objects.filter(case=case, kind=OutboxKind.PAYMENT).count() == 1
    escalation.refresh_from_db()
    assert (escalation.status, escalation.resolution, escalation.retry_pending) == ("resolved", "retry", False)
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_RETRY_SUCCEEDED, case_id=case.pk).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.EFFECT_REQUEUED, subject_id=key).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.EFFECT_DELIVERED, subject_id=key).count() == 1
    case.refresh_from_db()
    assert case.status == CaseStatus.COMPLETED and case.finished_at is not None
    assert not Escalation.objects.filter(case=case, status=EscalationStatus.OPEN).exists()


def test_a_retried_payment_that_fails_again_opens_a_new_escalation(owed_payment, settings, supervisor):
    with Gateway(["500"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        entry = _fail_past_the_window(owed_payment, gateway)
        first = Escalation.objects.get(case=entry.case, status=EscalationStatus.OPEN)
        escalation_resolve(escalation_id=first.pk, actor=Actor.user(supervisor), resolution="retry", note="try again")

        # when the gateway is still down through the new window
        entry = _fail_past_the_window(OutboxEntry.objects.get(pk=entry.pk), gateway)

    # then a second escalation opens for the same entry (the window restarted at the retry), and nothing was paid
    second = Escalation.objects.get(case=entry.case, status=EscalationStatus.OPEN)
    assert second.pk != first.pk and entry.escalation == second and not gateway.paid
    assert gateway.requests == Counter({entry.idempotency_key: 10}) and entry.attempts == 5
    assert Case.objects.get(pk=entry.case_id).status == CaseStatus.WAITING


@pytest.mark.parametrize(
    ("resolution", "case_status", "reason_code"),
    [("reject", CaseStatus.REJECTED, "other"), ("cancel_case", CaseStatus.CANCELLED, "opened_in_error")],
)
def test_rejecting_or_cancelling_a_failed_payment_closes_it_unpaid(
    owed_payment, settings, supervisor, resolution, case_status, reason_code
):
    with Gateway(["500"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        entry = _fail_past_the_window(owed_payment, gateway)
        escalation = Escalation.objects.get(case=entry.case, status=EscalationStatus.OPEN)
        requests = gateway.requests[entry.idempotency_key]

        escalation_resolve(
            escalation_id=escalation.pk,
            actor=Actor.user(supervisor),
            resolution=resolution,
            note="do not pay",
            reason_code=reason_code,
        )
        # and later sweeps and a stray delivery task find nothing to do
        cases_sweep(now=timezone.now() + timedelta(days=1))
        assert outbox_deliver(idempotency_key=entry.idempotency_key) is None

    entry.refresh_from_db()
    assert (entry.status, entry.needs_attention) == (OutboxStatus.CANCELLED, False)
    assert gateway.requests[entry.idempotency_key] == requests and not gateway.paid
    case = Case.objects.get(pk=entry.case_id)
    assert (case.status, case.current_step) == (case_status, None) and case.finished_at is not None
    assert AuditEvent.objects.filter(action=AuditAction.EFFECT_CANCELLED, subject_id=entry.idempotency_key).exists()
    assert not Escalation.objects.filter(case=case, status=EscalationStatus.OPEN).exists()


@pytest.mark.parametrize("resolution", ["approve", "amend"])
def test_a_failed_payment_cannot_be_approved_again(owed_payment, settings, supervisor, resolution):
    with Gateway(["500"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        entry = _fail_past_the_window(owed_payment, gateway)
    escalation = Escalation.objects.get(case=entry.case, status=EscalationStatus.OPEN)
    events = AuditEvent.objects.count()

    with pytest.raises(ValidationFailed) as refused:
        escalation_resolve(
            escalation_id=escalation.pk,
            actor=Actor.user(supervisor),
            resolution=resolution,
            note="pay it",
            amount="10.00",
            outcome="paid",
        )

    # then a clear error, and nothing changed: no second payment owed, the escalation still open
    assert "retry it" in refused.value.message and refused.value.fields == {
        "resolution": "retry, reject or cancel_case"
    }
    assert OutboxEntry.objects.filter(case=entry.case, kind=OutboxKind.PAYMENT).count() == 1
    assert OutboxEntry.objects.get(pk=entry.pk).status == OutboxStatus.FAILED
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.OPEN
    assert AuditEvent.objects.count() == events


def test_a_letter_failing_while_the_case_waits_on_another_escalation_is_escalated_once_that_is_decided(
    claim_generator, settings, supervisor
):
    # given a paid claim whose letter cannot be sent (the mail server refuses connections)
    settings.SELFOPS = {
        **settings.SELFOPS,
        "OUTBOX_RETRY_BACKOFF": 2,
        "OUTBOX_RETRY_WINDOW": 60,
        "DELIVER_INLINE": False,
    }
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", _closed_port(), 0.3
    with Gateway(["500"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        case = submit(claim_generator.claim("straight_through"))
        engine.advance_case(case.pk)
        payment = _fail_past_the_window(OutboxEntry.objects.get(case=case, kind=OutboxKind.PAYMENT), gateway)
    payment_escalation = Escalation.objects.get(case=case, status=EscalationStatus.OPEN)
    # when the letter fails for good while the case waits on the payment's escalation
    letter = _fail_past_the_window(OutboxEntry.objects.get(case=case, kind=OutboxKind.MESSAGE), None)

    # then the letter is failed and flagged but opens no second escalation yet
    assert (letter.status, letter.escalation) == (OutboxStatus.FAILED, None)
    assert Escalation.objects.filter(case=case).count() == 1
    # when the payment's escalation is decided
    escalation_resolve(
        escalation_id=payment_escalation.pk, actor=Actor.user(supervisor), resolution="retry", note="again"
    )
    assert payment.escalation_id == payment_escalation.pk
    cases_sweep()
    # then the sweeper opens the letter's escalation, in the communication step's queue
    opened = Escalation.objects.get(case=case, status=EscalationStatus.OPEN)
    assert (opened.reason, opened.step.key) == ("effect_failed", "communication")
    assert OutboxEntry.objects.get(pk=letter.pk).escalation == opened
    assert "The letter could not be sent after" in opened.reasons[0]["message"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
