"""Idempotent POSTs: a client's retry with the same ``Idempotency-Key`` gets the first answer again.

One transaction takes the key (a unique row), does the work and stores its answer, so a crash leaves either all or
nothing and a submission costs one commit. A second request with the same key waits on the unique index while the
first is in flight (PostgreSQL) and then finds its answer: same body, the stored answer is replayed; another body,
422. A row left ``in_flight`` (written by an older two-transaction version whose request died) is a 409 until
``STALE_AFTER``, then taken over. Requests refused as bad input store nothing (the key may be used again with a
corrected body).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from operations.errors import Conflict, DomainError, ValidationFailed
from operations.models import ApiClient, IdempotencyRecord, IdempotencyStatus

STALE_AFTER = timedelta(seconds=60)
KEEP_FOR = timedelta(hours=48)


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status = 422


class IdempotencyInFlight(Conflict):
    code = "idempotency_in_flight"


@dataclass
class Answer:
    status: int
    body: dict
    replayed: bool = False


def request_hash(body) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def validate_key(key: str | None) -> str:
    key = (key or "").strip()
    if not key or len(key) > 200:
        raise ValidationFailed(
            "an Idempotency-Key header of 1 to 200 characters is required",
            fields={"Idempotency-Key": "required"},
        )
    return key


def idempotent(*, client: ApiClient, key: str, body, work: Callable[[], Answer]) -> Answer:
    """Run ``work`` once per (client, key); see the module docstring for what a repeat gets."""
    digest = request_hash(body)
    with transaction.atomic():
        record = _take(client, key, digest, timezone.now())
        if isinstance(record, Answer):
            return record
        answer = work()
        IdempotencyRecord.objects.filter(pk=record.pk).update(
            status=IdempotencyStatus.DONE, response_status=answer.status, response_body=answer.body
        )
    return answer


def _take(client: ApiClient, key: str, digest: str, now) -> IdempotencyRecord | Answer:
    try:
        with transaction.atomic():  # a savepoint: a duplicate key leaves the outer transaction usable
            return IdempotencyRecord.objects.create(client=client, key=key, request_hash=digest)
    except IntegrityError:
        pass
    existing = IdempotencyRecord.objects.filter(client=client, key=key).first()
    if existing is None:  # forgotten by the cleanup between our insert and our read
        raise IdempotencyInFlight("this Idempotency-Key was being released; retry")
    if existing.request_hash != digest:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body",
            fields={"Idempotency-Key": "reused with another body"},
        )
    if existing.status == IdempotencyStatus.DONE:
        return Answer(existing.response_status, existing.response_body, replayed=True)
    # Left in flight by a request that died before finishing (its work rolled back with it): take it over, once.
    stale = existing.locked_at < now - STALE_AFTER
    if stale and IdempotencyRecord.objects.filter(pk=existing.pk, locked_at=existing.locked_at).update(locked_at=now):
        return existing
    raise IdempotencyInFlight("a request with this Idempotency-Key is still being processed; retry later")


def idempotency_cleanup(*, now=None) -> int:
    """Forget answers older than 48 hours (keys are promised for at least 24)."""
    now = now or timezone.now()
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=now - KEEP_FOR).delete()
    return deleted
