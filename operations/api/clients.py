"""API clients: creating, rotating and revoking their keys (each audited), and recognising a presented key.

A key reads ``sok_<prefix>_<secret>``. The prefix finds the client row; only the SHA-256 of the whole key is stored
and compared in constant time. A key of 256 random bits needs no slow hash: nobody can guess it from its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from operations.errors import Conflict, ValidationFailed
from operations.models import ApiClient, ApiScope

KEY_PREFIX = "sok_"
RATE = re.compile(r"[1-9][0-9]{0,8}/(s|sec|m|min|h|hour|d|day)")


def _new_key() -> tuple[str, str, str]:
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, _digest(key)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_client_errors(name: str, scopes: list, queues: list, throttle_rate: str = "") -> dict:
    """Every problem with an API client's terms, by field (empty when it can be created); the admin's form shows
    them."""
    errors = {}
    if throttle_rate and not RATE.fullmatch(throttle_rate):
        errors["throttle_rate"] = "requests per period, e.g. 600/min (s, min, hour or day)"
    if not (name or "").strip() or len(name) > 100:
        errors["name"] = "a name of 1 to 100 characters is required"
    if not isinstance(scopes, list) or any(s not in ApiScope.values for s in scopes):
        errors["scopes"] = f"unknown scopes; choose from {', '.join(ApiScope.values)}"
    if not isinstance(queues, list) or not all(isinstance(q, str) and q for q in queues):
        errors["queues"] = "a list of queue names"
    return errors


def api_client_create(
    *, name: str, scopes: list[str], actor: Actor, queues: list[str] | None = None, throttle_rate: str = ""
) -> tuple[ApiClient, str]:
    """Create a client and return it with its key, which is shown this once and never stored."""
    queues = list(queues or [])
    if errors := api_client_errors(name, scopes, queues, throttle_rate):
        raise ValidationFailed("the API client is not valid", fields=errors)
    key, prefix, digest = _new_key()
    try:
        with transaction.atomic():
            client = ApiClient.objects.create(
                name=name.strip(),
                key_prefix=prefix,
                key_hash=digest,
                scopes=sorted(set(scopes)),
                queues=queues,
                throttle_rate=throttle_rate,
            )
            audit_record(
                actor=actor,
                action=AuditAction.API_CLIENT_CREATED,
                subject=client,
                data={"scopes": client.scopes, "queues": client.queues, "key_prefix": prefix},
            )
    except IntegrityError as exc:
        raise Conflict(f"an API client named '{name}' already exists", fields={"name": "taken"}) from exc
    return client, key


def api_client_rotate(*, client_id: int, actor: Actor) -> tuple[ApiClient, str]:
    """Give a client a new key; the old one stops working at once. Returns the new key, shown this once."""
    key, prefix, digest = _new_key()
    with transaction.atomic():
        client = ApiClient.objects.select_for_update().get(pk=client_id)
        if not client.active:
            raise Conflict("a revoked client cannot be given a new key")
        old_prefix = client.key_prefix
        client.key_prefix, client.key_hash, client.rotated_at = prefix, digest, timezone.now()
        client.save(update_fields=["key_prefix", "key_hash", "rotated_at"])
        audit_record(
            actor=actor,
            action=AuditAction.API_CLIENT_ROTATED,
            subject=client,
            data={"old_key_prefix": old_prefix, "key_prefix": prefix},
        )
    return client, key


def api_client_revoke(*, client_id: int, actor: Actor) -> ApiClient:
    """Revoke a client: its key stops working at once and its webhooks stop. Its cases stay (and stay its own)."""
    with transaction.atomic():
        client = ApiClient.objects.select_for_update().get(pk=client_id)
        if not client.active:
            return client
        client.active, client.revoked_at = False, timezone.now()
        client.save(update_fields=["active", "revoked_at"])
        audit_record(actor=actor, action=AuditAction.API_CLIENT_REVOKED, subject=client, data={})
    return client


def api_client_for_key(key: str) -> ApiClient | None:
    """The active client a presented key belongs to, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    prefix = key[len(KEY_PREFIX) :].split("_", 1)[0]
    client = ApiClient.objects.filter(key_prefix=prefix, active=True).first() if len(prefix) == 12 else None
    # Compare a digest even when no client matched, so that timing does not tell which prefixes exist.
    expected = client.key_hash if client is not None else "0" * 64
    if hmac.compare_digest(expected, _digest(key)) and client is not None:
        return client
    return None
