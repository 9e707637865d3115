"""django-q2 tasks of the API: thin, primitive ids, safe to run twice."""

from audit.context import correlation
from operations.api import idempotency, webhooks


def deliver_webhook(delivery_id: int) -> None:
    with correlation(f"webhook-{delivery_id}"):
        webhooks.webhook_deliver(delivery_id=int(delivery_id))


def deliver_due_webhooks() -> int:
    with correlation("webhooks-due"):
        return webhooks.webhooks_deliver_due()


def idempotency_cleanup() -> int:
    return idempotency.idempotency_cleanup()
