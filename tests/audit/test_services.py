import json
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.http import HttpResponse
from django.test import RequestFactory

from audit.actors import Actor
from audit.context import correlation
from audit.middleware import CorrelationIdMiddleware
from audit.models import AuditAction, AuditEvent
from audit.services import REDACTED, audit_record, redact
from governance.services import policy_publish, stop_engage, stop_release
from operations import engine
from operations.models import Escalation, EscalationStatus, Resolution
from operations.services import escalation_resolve
from tests.helpers import senior_user, settle, submit

CARD = "4111111111111111"
CARD_GROUPED = "4111 1111 1111 1111"
IBAN_DIGITS = "DE89 3704 0044 0532 0130 00"


def test_redact_masks_long_digit_runs_and_secret_keys_but_keeps_the_rest(settings):
    settings.SECRET_KEY = "the-deployment-secret-key-0123456789"
    data = {
        "note": f"paid with {CARD_GROUPED}, ref {CARD}, account {IBAN_DIGITS}",
        "password": "hunter2hunter2",
        "nested": [{"API_KEY": "k"}, {"client_secret": "s", "access_token": "t"}],
        "echo": f"key={settings.SECRET_KEY}",
        "account_number": 12345678901234,
        "amount": "1234.56",
        "policy_version": 3,
        "digest": "sha256:0123456789abcdef0123456789abcdef",
        "loss_date": "2026-11-25",
        "confidence": 0.91,
    }
    clean = redact(data)
    assert clean["note"] == "paid with ************1111, ref ************1111, account DE89 **************3000"
    assert clean["password"] == clean["nested"][0]["API_KEY"] == REDACTED
    assert clean["nested"][1] == {"client_secret": REDACTED, "access_token": REDACTED}
    assert clean["echo"] == f"key={REDACTED}"
    assert clean["account_number"] == "**********1234"
    for kept in ("amount", "policy_version", "digest", "loss_date", "confidence"):
        assert clean[kept] == data[kept]
    assert data["password"] == "hunter2hunter2"  # the caller's dict is left alone


@pytest.mark.django_db
def test_events_are_redacted_on_write():
    event = audit_record(
        actor=Actor.system("test"),
        action=AuditAction.REFERENCE_LOADED,
        subject_type="t",
        subject_id="1",
        subject_label=f"card {CARD}",
        data={"token": "abc", "description": f"card {CARD}"},
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == {"token": REDACTED, "description": "card ************1111"}
    assert stored.subject_label == "card ************1111"


def _all_event_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT actor_label, subject_label, subject_id, data, correlation_id FROM audit_auditevent")
        return "\n".join(json.dumps([str(v) for v in row], ensure_ascii=False) for row in cursor.fetchall())


@pytest.mark.django_db
def test_no_secret_or_full_card_number_reaches_the_trail_through_real_flows(claim_generator, settings):
    # given a deployment secret, and people who paste it and a card number wherever they can type
    settings.SECRET_KEY = "s3cr3t-value-that-must-never-be-logged"
    leak = f"card {CARD_GROUPED} / {CARD}, key {settings.SECRET_KEY}"
    sam = Actor.user(senior_user("sam"))

    # when claims run through the workflow with the leak in their description, a policy is published, a stop flipped,
    # and an escalation resolved with the leak in the note
    claims = [claim_generator.claim(s) for s in ("straight_through", "over_limit")]
    for claim in claims:
        claim.payload["description"] = leak
    cases = [submit(c) for c in claims]
    settle(*(c.pk for c in cases))
    escalation = Escalation.objects.get(case=cases[1], status=EscalationStatus.OPEN)
    escalation_resolve(escalation_id=escalation.pk, actor=sam, resolution=Resolution.REJECT, note=leak)
    policy_publish(agent_key="claims.payment", actor=sam, note=leak, max_amount=Decimal("100"))
    stop_engage(scope="agent", target="claims.payment", reason=leak, actor=sam)
    stop_release(scope="agent", target="claims.payment", reason=leak, actor=sam)

    # then the events recorded all of it, masked: the secret and the full numbers appear nowhere
    text = _all_event_text()
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_RESOLVED).exists()
    assert "************1111" in text  # the leaks did reach the trail, masked
    assert settings.SECRET_KEY not in text
    assert not re.search(r"4111[ -]?1111[ -]?1111[ -]?1111", text)


@pytest.mark.django_db
def test_services_write_actor_subject_and_correlation_id(claim_generator):
    # given a claim submitted and run under a request's correlation id
    with correlation("req-123"):
        case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)

    # then every event names its actor and subject and carries a correlation id
    events = list(AuditEvent.objects.filter(case_id=case.pk))
    actions = {e.action for e in events}
    assert {AuditAction.CASE_SUBMITTED, AuditAction.STEP_DECIDED, AuditAction.CASE_COMPLETED} <= actions
    for e in events:
        assert e.actor_type and e.actor_id and e.subject_type and e.subject_id and e.correlation_id, e
    assert AuditEvent.objects.get(case_id=case.pk, action=AuditAction.CASE_SUBMITTED).correlation_id == "req-123"
    decided = AuditEvent.objects.filter(case_id=case.pk, action=AuditAction.STEP_DECIDED).first()
    assert decided.actor_type == "agent" and "@" in decided.actor_id  # the agent's version
    assert {"proposal", "verdict"} <= set(decided.data) and "policy_version" in decided.data["verdict"]


@pytest.mark.django_db
def test_middleware_runs_the_request_under_its_x_request_id_and_returns_it():
    # given a view that writes an event
    def view(request):
        audit_record(actor=Actor.system("t"), action=AuditAction.REFERENCE_LOADED, subject_type="t", subject_id="1")
        return HttpResponse("ok")

    middleware = CorrelationIdMiddleware(view)

    # when a request carries X-Request-ID, then the event and the response carry it
    response = middleware(RequestFactory().get("/", HTTP_X_REQUEST_ID="upstream-42"))
    assert response["X-Request-ID"] == "upstream-42"
    assert AuditEvent.objects.latest("id").correlation_id == "upstream-42"

    # when it carries none (or garbage), then a fresh id is made and returned
    response = middleware(RequestFactory().get("/", HTTP_X_REQUEST_ID="bad id\nwith newline"))
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])
    assert AuditEvent.objects.latest("id").correlation_id == response["X-Request-ID"]


def test_the_middleware_is_installed(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="probe-1")
    assert response["X-Request-ID"] == "probe-1"
