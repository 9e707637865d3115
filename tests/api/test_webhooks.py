import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.api.webhooks import verify_signature, webhook_deliver, webhooks_deliver_due
from operations.models import WebhookDelivery, WebhookDeliveryStatus
from operations.services import escalation_resolve
from tests.api.conftest import escalated_via
from tests.helpers import settle

pytestmark = pytest.mark.django_db


class Receiver:
    """A real webhook receiver on 127.0.0.1: answers each POST with the next status of its script (the last one
    repeats) and keeps what it received."""

    def __init__(self, script: list[int]):
        self.script = list(script)
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append({"headers": dict(self.headers), "body": body})
                status = receiver.script.pop(0) if len(receiver.script) > 1 else receiver.script[0]
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    receivers = []

    def make(script):
        receivers.append(Receiver(script))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def subscribe(caller, url, events):
    response = caller.post("/api/v1/webhooks/subscriptions/", {"url": url, "events": events})
    assert response.status_code == 201, response.json()
    return response.json()


def test_a_delivery_failing_twice_is_retried_with_backoff_and_then_delivered_signed(
    intake, claim_generator, receiver_factory
):
    # given a subscription to case.completed at a receiver that fails twice, then accepts
    receiver = receiver_factory([500, 503, 200])
    secret = subscribe(intake, receiver.url, ["case.completed"])["secret"]
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    settle(case_id)
    delivery = WebhookDelivery.objects.get()
    t0 = (timezone.now() + timedelta(seconds=1)).replace(microsecond=0)

    # when the worker tries at t0, too early, after the backoff, and after the next one
    first = webhook_deliver(delivery_id=delivery.pk, now=t0)
    early = webhook_deliver(delivery_id=delivery.pk, now=t0 + timedelta(seconds=10))
    second_due = webhooks_deliver_due(now=t0 + timedelta(seconds=31))
    third_due = webhooks_deliver_due(now=t0 + timedelta(seconds=31 + 61))

    # then three attempts reached the receiver, all the same event, each signed over its own timestamp
    delivery.refresh_from_db()
    assert (first.attempts, early.attempts, second_due, third_due) == (1, 1, 1, 1)
    assert delivery.status == WebhookDeliveryStatus.DELIVERED
    assert [e["status"] for e in delivery.log] == [500, 503, 200]
    assert len(receiver.received) == 3
    assert {r["headers"]["X-Selfops-Event-Id"] for r in receiver.received} == {str(delivery.event_id)}
    assert len({r["body"] for r in receiver.received}) == 1
    for request, at in zip(receiver.received, [0, 31, 92], strict=True):
        headers = request["headers"]
        assert headers["X-Selfops-Timestamp"] == str(int((t0 + timedelta(seconds=at)).timestamp()))
        assert verify_signature(
            secret,
            headers["X-Selfops-Timestamp"],
            request["body"],
            headers["X-Selfops-Signature"],
            now=int(headers["X-Selfops-Timestamp"]),
        )
        assert not verify_signature(
            "whsec_wrong",
            headers["X-Selfops-Timestamp"],
            request["body"],
            headers["X-Selfops-Signature"],
            now=int(headers["X-Selfops-Timestamp"]),
        )
    event = json.loads(receiver.received[0]["body"])
    assert event["type"] == "case.completed" and event["data"]["case"]["id"] == case_id
    assert event["data"]["case"]["status"] == "completed"
    # and the delivery log is there for the client
    log = intake.get(f"/api/v1/webhooks/deliveries/{delivery.pk}/").json()
    assert [e["status"] for e in log["log"]] == [500, 503, 200] and log["status"] == "delivered"


def test_the_signature_matches_the_readme_recipe(intake, claim_generator, receiver_factory):
    import hashlib
    import hmac

    receiver = receiver_factory([204])
    secret = subscribe(intake, receiver.url, ["case.completed"])["secret"]
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    settle(case_id)
    webhook_deliver(delivery_id=WebhookDelivery.objects.get().pk)

    request = receiver.received[0]
    timestamp, raw_body = request["headers"]["X-Selfops-Timestamp"], request["body"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Selfops-Signature"], f"v1={expected}")


def test_a_receiver_that_never_answers_2xx_is_dead_lettered_then_redelivered_by_hand(
    intake, claim_generator, receiver_factory, settings
):
    settings.SELFOPS = {**settings.SELFOPS, "WEBHOOK_MAX_ATTEMPTS": 3}
    receiver = receiver_factory([500])
    subscribe(intake, receiver.url, ["case.completed"])
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    settle(case_id)
    delivery = WebhookDelivery.objects.get()
    now = timezone.now()

    for _ in range(5):
        webhooks_deliver_due(now=now)
        now += timedelta(hours=1)

    delivery.refresh_from_db()
    assert delivery.status == WebhookDeliveryStatus.DEAD and delivery.attempts == 3
    assert len(receiver.received) == 3
    assert AuditEvent.objects.filter(action=AuditAction.WEBHOOK_DEAD_LETTERED, subject_id=str(delivery.pk)).exists()

    # when the receiver is fixed and the client asks for a redelivery
    receiver.script = [200]
    again = intake.post(f"/api/v1/webhooks/deliveries/{delivery.pk}/redeliver/")
    twice = intake.post(f"/api/v1/webhooks/deliveries/{delivery.pk}/redeliver/")
    webhook_deliver(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (again.status_code, twice.status_code) == (202, 409)
    assert delivery.status == WebhookDeliveryStatus.DELIVERED
    assert receiver.received[-1]["headers"]["X-Selfops-Event-Id"] == str(delivery.event_id)


def test_escalation_events_go_to_the_queues_clients_and_case_events_to_the_submitter_only(
    intake, other, make_caller, claim_generator, receiver_factory
):
    receiver = receiver_factory([200])
    events = ["case.completed", "case.rejected", "escalation.opened", "escalation.resolved"]
    subscribe(intake, receiver.url, events)
    subscribe(other, receiver.url, events)  # another queue, and not the submitter
    colleague = make_caller("colleague")  # same queue as intake, not the submitter
    subscribe(colleague, receiver.url, ["escalation.opened"])

    escalation = escalated_via(intake, claim_generator)
    escalation_resolve(escalation_id=escalation.pk, actor=Actor.system("t"), resolution="approve", note="ok")
    settle(escalation.case_id)

    owed = sorted(WebhookDelivery.objects.values_list("subscription__client__name", "event_type"))
    assert owed == [
        ("colleague", "escalation.opened"),
        ("intake", "case.completed"),
        ("intake", "escalation.opened"),
        ("intake", "escalation.resolved"),
    ]


def test_deliveries_are_owed_in_the_same_transaction_as_the_change(intake, claim_generator):
    subscribe(intake, "http://127.0.0.1:9/hooks", ["escalation.resolved"])
    escalation = escalated_via(intake, claim_generator)

    with pytest.raises(RuntimeError), transaction.atomic():
        escalation_resolve(escalation_id=escalation.pk, actor=Actor.system("t"), resolution="approve", note="ok")
        assert WebhookDelivery.objects.filter(event_type="escalation.resolved").count() == 1
        raise RuntimeError("the change is rolled back")

    assert not WebhookDelivery.objects.filter(event_type="escalation.resolved").exists()


def test_a_subscription_needs_a_url_and_known_events(intake, claims_workflow):
    response = intake.post("/api/v1/webhooks/subscriptions/", {"url": "ftp://x", "events": ["case.exploded"]})
    assert response.status_code == 400 and {"url", "events.0"} <= set(response.json()["fields"])


def test_removing_a_subscription_dead_letters_its_pending_deliveries(intake, claim_generator):
    sub = subscribe(intake, "http://127.0.0.1:9/hooks", ["case.completed"])
    settle(intake.submit(claim_generator.claim("straight_through")).json()["id"])

    assert intake.delete(f"/api/v1/webhooks/subscriptions/{sub['id']}/").status_code == 204
    assert WebhookDelivery.objects.get().status == WebhookDeliveryStatus.DEAD
    assert intake.get("/api/v1/webhooks/subscriptions/").json() == []


def test_deliveries_of_a_revoked_client_are_dead_lettered_not_sent(intake, claim_generator, receiver_factory):
    from operations.api.clients import api_client_revoke

    receiver = receiver_factory([200])
    subscribe(intake, receiver.url, ["case.completed"])
    settle(intake.submit(claim_generator.claim("straight_through")).json()["id"])
    api_client_revoke(client_id=intake.client.pk, actor=Actor.system("t"))

    delivery = webhook_deliver(delivery_id=WebhookDelivery.objects.get().pk)

    assert delivery.status == WebhookDeliveryStatus.DEAD
    assert receiver.received == []


def test_the_admin_redelivers_a_dead_letter_and_rotates_a_key(intake, claim_generator, client, settings):
    from django.contrib.auth import get_user_model

    from operations.models import ApiClient

    settings.SELFOPS = {**settings.SELFOPS, "WEBHOOK_MAX_ATTEMPTS": 1}
    subscribe(intake, "http://127.0.0.1:9/hooks", ["case.completed"])  # nothing listens on port 9
    settle(intake.submit(claim_generator.claim("straight_through")).json()["id"])
    delivery = webhook_deliver(delivery_id=WebhookDelivery.objects.get().pk)
    assert delivery.status == WebhookDeliveryStatus.DEAD and "error" in delivery.log[-1]
    client.force_login(get_user_model().objects.create_superuser("root", password="x" * 12))

    client.post(
        "/admin/operations/webhookdelivery/", {"action": "redeliver", "_selected_action": [delivery.pk]}, follow=True
    )
    page = client.post(
        "/admin/operations/apiclient/", {"action": "rotate_keys", "_selected_action": [intake.client.pk]}, follow=True
    )

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (WebhookDeliveryStatus.PENDING, 0)
    assert AuditEvent.objects.get(action=AuditAction.WEBHOOK_REDELIVERY).actor_type == "user"
    new_key = next(str(m) for m in page.context["messages"] if "new key" in str(m)).rsplit(" ", 1)[1]
    assert intake.get("/api/v1/cases/").status_code == 401
    from tests.api.conftest import Caller

    assert Caller(ApiClient.objects.get(pk=intake.client.pk), new_key).get("/api/v1/cases/").status_code == 200
