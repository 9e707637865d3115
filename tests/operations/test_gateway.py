"""Downstream failure: the payment gateway (a real HTTP server on 127.0.0.1) times out or answers 500; the payment is
retried with the same idempotency key after a backoff and succeeds once; past the retry window it is marked failed
and flagged for a person; nothing is paid twice."""

import json
import logging
import threading
import time
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from audit.models import AuditAction, AuditEvent
from operations import engine
from operations.models import OutboxEntry, OutboxKind, OutboxStatus
from operations.services import cases_sweep, outbox_deliver
from tests.helpers import submit

pytestmark = pytest.mark.django_db


class Gateway:
    """A payment gateway that honours Idempotency-Key: it pays a key once and answers the same for repeats. Its
    behaviour per request is scripted: "timeout", "500", "400" or "ok" (the last one repeats)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = Counter()
        self.paid: dict[str, dict] = {}
        self.bodies = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                key = self.headers.get("Idempotency-Key", "")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                gateway.requests[key] += 1
                gateway.bodies.append(body)
                step = gateway.script.pop(0) if len(gateway.script) > 1 else gateway.script[0]
                if step == "timeout":
                    time.sleep(1.0)
                    return
                if step in ("500", "400"):
                    self.send_response(int(step))
                    self.end_headers()
                    return
                answer = gateway.paid.setdefault(key, {"id": f"pay-{len(gateway.paid) + 1}", "amount": body["amount"]})
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/payments"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


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
    queued = OrmQ.objects.count()
    cases_sweep(now=t0 + timedelta(days=1))
    assert OrmQ.objects.count() == queued


def test_a_payment_the_gateway_refuses_is_not_retried(owed_payment, settings):
    with Gateway(["400"]) as gateway:
        settings.SELFOPS_PAYMENT_GATEWAY_URL = gateway.url
        entry = outbox_deliver(idempotency_key=owed_payment.idempotency_key)

    assert (entry.status, entry.needs_attention, entry.attempts) == (OutboxStatus.FAILED, True, 1)
    assert "answered 400" in entry.last_error


def test_without_a_gateway_payments_are_settled_in_the_ledger(owed_payment, settings):
    settings.SELFOPS_PAYMENT_GATEWAY_URL = ""

    entry = outbox_deliver(idempotency_key=owed_payment.idempotency_key)

    assert (entry.status, entry.attempts) == (OutboxStatus.DELIVERED, 1)
