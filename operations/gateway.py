"""The payment gateway client: one POST per payment attempt, keyed by the outbox's idempotency key, so that a
gateway which honours ``Idempotency-Key`` pays once however often we retry.

Configured by ``SELFOPS_PAYMENT_GATEWAY_URL``; unset, payments are settled into the ledger only (the outbox row is the
ledger entry), as before.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings


class GatewayError(Exception):
    """The gateway did not confirm the payment. ``retryable``: a timeout, a connection error, a 5xx, 408, 409 or
    429 (try again with the same key); otherwise the gateway refused the payment itself."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


RETRYABLE_STATUS = {408, 409, 425, 429}


def gateway_url() -> str:
    return getattr(settings, "SELFOPS_PAYMENT_GATEWAY_URL", "") or ""


def pay(*, idempotency_key: str, amount: Decimal | None, reference: str, payload: dict) -> dict:
    """Ask the gateway to pay; returns its JSON answer. Raises ``GatewayError`` when the payment is not confirmed."""
    url = gateway_url()
    if urlsplit(url).scheme not in ("http", "https"):
        raise GatewayError(f"the payment gateway URL must be http(s), not {url!r}", retryable=False)
    body = json.dumps(
        {
            "idempotency_key": idempotency_key,
            "amount": str(amount) if amount is not None else None,
            "reference": reference,
            "details": payload,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
    )
    timeout = settings.SELFOPS.get("PAYMENT_TIMEOUT", 10.0)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
            raw = response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        retryable = exc.code >= 500 or exc.code in RETRYABLE_STATUS
        raise GatewayError(f"the gateway answered {exc.code}", retryable=retryable) from exc
    except TimeoutError as exc:
        raise GatewayError(f"the gateway did not answer within {timeout:g} s", retryable=True) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayError(f"the gateway is unreachable: {getattr(exc, 'reason', exc)}", retryable=True) from exc
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return {}
