"""Webhooks: signed HTTP notifications to clients' subscriptions, through an outbox.

Deliveries are written in the same transaction as the change they report (``webhooks_owe_for``, called when a
step's audit events are written), so a committed change always has its deliveries and a rolled-back one has none.
A django-q2 task then POSTs each one; a failure is retried with exponential backoff for a bounded number of attempts,
then the delivery is dead-lettered. Every attempt's status code (or error) is kept in the delivery's log.

Signature: ``X-Selfops-Signature: v1=<hex hmac_sha256(secret, f"{timestamp}.{raw_body}")>`` with the timestamp (unix
seconds) in ``X-Selfops-Timestamp`` and the stable event id in ``X-Selfops-Event-Id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from audit.actors import SYSTEM, Actor
from audit.models import AuditAction, AuditEvent
from audit.services import audit_record
from operations.errors import Conflict, ValidationFailed
from operations.models import (
    ApiClient,
    Case,
    Escalation,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEvent,
    WebhookSubscription,
)
from operations.queue import enqueue

logger = logging.getLogger(__name__)

CASE_EVENTS = {
    AuditAction.CASE_COMPLETED: WebhookEvent.CASE_COMPLETED,
    AuditAction.CASE_REJECTED: WebhookEvent.CASE_REJECTED,
}
ESCALATION_EVENTS = {
    AuditAction.ESCALATION_OPENED: WebhookEvent.ESCALATION_OPENED,
    AuditAction.ESCALATION_RESOLVED: WebhookEvent.ESCALATION_RESOLVED,
}
USER_AGENT = "selfops-webhooks/1"


def webhook_setting(name: str, default):
    return getattr(settings, "SELFOPS", {}).get(name, default)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for one delivery attempt."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(secret: str, timestamp: str, body: bytes, header: str, *, now: int, tolerance: int = 300) -> bool:
    """What a receiver does (the README shows the same in a few lines): recompute and compare in constant time,
    and refuse old timestamps so that a captured delivery cannot be replayed later."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), header or "")


# --- subscriptions ----------------------------------------------------------------------------------------------


def _validate_subscription(url: str, events: list) -> dict:
    errors = {}
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors["url"] = "an http(s) URL is required"
    if not isinstance(events, list) or not events:
        errors["events"] = "at least one event is required"
    elif unknown := [e for e in events if e not in WebhookEvent.values]:
        errors["events"] = f"unknown events: {', '.join(map(str, unknown))}"
    return errors


def webhook_subscription_create(*, client: ApiClient, url: str, events: list[str], actor: Actor):
    """Subscribe ``client`` to ``events`` at ``url``; returns the subscription and its signing secret, which is shown
    to the client this once."""
    if errors := _validate_subscription(url, events):
        raise ValidationFailed("the subscription is not valid", fields=errors)
    secret = "whsec_" + secrets.token_urlsafe(32)
    with transaction.atomic():
        subscription = WebhookSubscription.objects.create(
            client=client, url=url, events=sorted(set(events)), secret=secret
        )
        audit_record(
            actor=actor,
            action=AuditAction.WEBHOOK_SUBSCRIBED,
            subject=subscription,
            data={"client": client.name, "url": url, "events": subscription.events},
        )
    return subscription, secret


def webhook_subscription_delete(*, subscription_id: int, actor: Actor) -> None:
    """Stop a subscription: no new deliveries are owed to it (pending ones are dead-lettered)."""
    with transaction.atomic():
        subscription = WebhookSubscription.objects.select_for_update().get(pk=subscription_id)
        subscription.active = False
        subscription.save(update_fields=["active"])
        subscription.deliveries.filter(status=WebhookDeliveryStatus.PENDING).update(
            status=WebhookDeliveryStatus.DEAD, dead_lettered_at=timezone.now(), next_attempt_at=None
        )
        audit_record(
            actor=actor,
            action=AuditAction.WEBHOOK_UNSUBSCRIBED,
            subject=subscription,
            data={"client": subscription.client.name, "url": subscription.url},
        )


# --- owing deliveries (the outbox) --------------------------------------------------------------------------------


def _case_payload(case: Case) -> dict:
    return {
        "case": {
            "id": case.pk,
            "reference": case.reference,
            "workflow": case.workflow.key,
            "status": case.status,
            "finished_at": case.finished_at,
        }
    }


def _escalation_payload(escalation: Escalation) -> dict:
    return {
        "escalation": {
            "id": escalation.pk,
            "case_id": escalation.case_id,
            "queue": escalation.queue,
            "reason": escalation.reason,
            "amount": escalation.amount,
            "status": escalation.status,
            "resolution": escalation.resolution,
        }
    }


def webhooks_owe_for(case: Case, events: Iterable[AuditEvent]) -> list[WebhookDelivery]:
    """Write the deliveries owed for a batch of audit events about ``case``, in the caller's transaction. Case events
    go to the client that submitted the case; escalation events to the clients whose queues hold the escalation.
    Costs nothing when no event is one that webhooks report."""
    case_events = [e for e in events if e.action in CASE_EVENTS]
    escalation_events = [e for e in events if e.action in ESCALATION_EVENTS]
    if not case_events and not escalation_events:
        return []
    if not escalation_events and case.submitted_by_client_id is None:
        return []
    subscriptions = WebhookSubscription.objects.filter(active=True, client__active=True).select_related("client")
    if not escalation_events:
        subscriptions = subscriptions.filter(client_id=case.submitted_by_client_id)
    subscriptions = list(subscriptions)
    if not subscriptions:
        return []
    owed: list[WebhookDelivery] = []
    for event in case_events:
        kind = CASE_EVENTS[event.action]
        payload = _case_payload(case)
        for sub in subscriptions:
            if sub.client_id == case.submitted_by_client_id and kind in sub.events:
                owed.append(_delivery(sub, kind, payload))
    if escalation_events:
        escalations = Escalation.objects.in_bulk([int(e.subject_id) for e in escalation_events])
        for event in escalation_events:
            kind = ESCALATION_EVENTS[event.action]
            escalation = escalations.get(int(event.subject_id))
            if escalation is None:
                continue
            payload = _escalation_payload(escalation)
            for sub in subscriptions:
                if escalation.queue in (sub.client.queues or []) and kind in sub.events:
                    owed.append(_delivery(sub, kind, payload))
    if not owed:
        return []
    created = WebhookDelivery.objects.bulk_create(owed)
    for delivery in created:
        enqueue("operations.api.tasks.deliver_webhook", delivery.pk)
    return created


def _delivery(subscription: WebhookSubscription, kind: str, payload: dict) -> WebhookDelivery:
    return WebhookDelivery(
        subscription=subscription,
        event_id=uuid.uuid4(),
        event_type=kind,
        payload=json.loads(json.dumps(payload, cls=DjangoJSONEncoder)),
        next_attempt_at=timezone.now(),
    )


# --- delivering -------------------------------------------------------------------------------------------------


def envelope(delivery: WebhookDelivery) -> bytes:
    """The raw body of a delivery: the same bytes for every attempt."""
    return json.dumps(
        {
            "id": str(delivery.event_id),
            "type": delivery.event_type,
            "created_at": delivery.created_at.isoformat(),
            "data": delivery.payload,
        },
        separators=(",", ":"),
        sort_keys=True,
        cls=DjangoJSONEncoder,
    ).encode()


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=webhook_setting("WEBHOOK_BACKOFF_SECONDS", 30) * 2 ** max(attempts - 1, 0))


def _post(url: str, body: bytes, headers: dict, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (http(s) only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def webhook_deliver(*, delivery_id: int, now: datetime | None = None) -> WebhookDelivery | None:
    """Make one attempt at a pending delivery whose time has come; safe to run twice (a delivery being attempted is
    skipped). A 2xx answer delivers it; anything else schedules the next attempt after an exponential backoff, and
    after the last attempt the delivery is dead-lettered."""
    now = now or timezone.now()
    timeout = webhook_setting("WEBHOOK_TIMEOUT", 10)
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("subscription")
            .filter(pk=delivery_id, status=WebhookDeliveryStatus.PENDING)
            .first()
        )
        if delivery is None or (delivery.next_attempt_at and delivery.next_attempt_at > now):
            return delivery
        subscription = delivery.subscription
        if not subscription.active or not ApiClient.objects.filter(pk=subscription.client_id, active=True).exists():
            delivery.status, delivery.dead_lettered_at, delivery.next_attempt_at = WebhookDeliveryStatus.DEAD, now, None
            delivery.log = [*delivery.log, {"at": now.isoformat(), "error": "subscription removed or client revoked"}]
            delivery.save()
            return delivery
        # Claim the attempt before the HTTP call, outside any transaction: a second worker sees it as not yet due.
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=timeout + 30)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    body = envelope(delivery)
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Selfops-Event-Id": str(delivery.event_id),
        "X-Selfops-Event-Type": delivery.event_type,
        "X-Selfops-Timestamp": str(timestamp),
        "X-Selfops-Signature": sign(subscription.secret, timestamp, body),
    }
    entry: dict = {"at": now.isoformat(), "attempt": delivery.attempts}
    try:
        status = _post(subscription.url, body, headers, timeout)
        entry["status"] = status
        ok = 200 <= status < 300
    except Exception as exc:  # a receiver that is down or slow is the normal case to retry, not a crash
        entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        ok = False
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update(of=("self",)).get(pk=delivery.pk)
        delivery.log = [*delivery.log, entry]
        if ok:
            delivery.status = WebhookDeliveryStatus.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
        elif delivery.attempts >= webhook_setting("WEBHOOK_MAX_ATTEMPTS", 8):
            delivery.status = WebhookDeliveryStatus.DEAD
            delivery.dead_lettered_at = now
            delivery.next_attempt_at = None
            audit_record(
                actor=SYSTEM,
                action=AuditAction.WEBHOOK_DEAD_LETTERED,
                subject=delivery,
                data={"event_id": str(delivery.event_id), "attempts": delivery.attempts, "last": entry},
            )
        else:
            delivery.next_attempt_at = now + _backoff(delivery.attempts)
        delivery.save()
    return delivery


def webhooks_deliver_due(*, now: datetime | None = None, limit: int = 200) -> int:
    """Attempt every pending delivery whose next attempt is due (the retry schedule)."""
    now = now or timezone.now()
    ids = list(
        WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in ids:
        webhook_deliver(delivery_id=pk, now=now)
    return len(ids)


def webhook_redeliver(*, delivery_id: int, actor: Actor) -> WebhookDelivery:
    """Send a delivered or dead-lettered event again (same event id, a fresh series of attempts)."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update(of=("self",)).get(pk=delivery_id)
        if delivery.status == WebhookDeliveryStatus.PENDING:
            raise Conflict("this delivery is still pending: it will be attempted again by itself")
        if not delivery.subscription.active:
            raise Conflict("this subscription was removed")
        delivery.status = WebhookDeliveryStatus.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = timezone.now()
        delivery.dead_lettered_at = None
        delivery.log = [*delivery.log, {"at": timezone.now().isoformat(), "redelivery_by": actor.label}]
        delivery.save()
        audit_record(
            actor=actor,
            action=AuditAction.WEBHOOK_REDELIVERY,
            subject=delivery,
            data={"event_id": str(delivery.event_id), "event_type": delivery.event_type},
        )
        enqueue("operations.api.tasks.deliver_webhook", delivery.pk)
    return delivery
