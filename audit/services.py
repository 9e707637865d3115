"""Writing to the audit trail. Callers write events inside the transaction of the change they record."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from audit.actors import Actor
from audit.context import current_correlation_id
from audit.models import AuditEvent

REDACTED = "[redacted]"
# Keys whose values never belong in the trail, whatever they hold.
_SECRET_KEY_NAME = re.compile(
    r"(?:^|[_.-])(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|apikey|private[_-]?key|authorization"
    r"|credentials?|cvv|cvc|pin)$",
    re.IGNORECASE,
)
# 12 or more digits, possibly grouped by spaces or dashes: card, bank account and similar numbers.
# Not inside a longer alphanumeric token, so hex digests and ids are left alone.
_ANY_DIGIT = re.compile(r"\d")
_LONG_DIGITS = re.compile(r"(?<![0-9A-Za-z])\d(?:[ -]?\d){11,}(?![0-9A-Za-z])")


def _mask_digits(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "*" * (len(digits) - 4) + digits[-4:]


def _known_secrets() -> tuple[str, ...]:
    values = [getattr(settings, "SECRET_KEY", ""), getattr(settings, "AUDIT_DIGEST_KEY", "")]
    values += [db.get("PASSWORD", "") for db in settings.DATABASES.values()]
    return tuple(v for v in values if v and len(v) >= 8)


def _redact_str(value: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in value:
            value = value.replace(secret, REDACTED)
    if len(value) >= 12 and _ANY_DIGIT.search(value):  # the common case (no digits) costs one C-level scan
        value = _LONG_DIGITS.sub(_mask_digits, value)
    return value


def redact(data: Any, *, _secrets: tuple[str, ...] | None = None) -> Any:
    """A copy of ``data`` fit for the audit trail: values under secret-looking keys (password, secret, token,
    api_key, ...) replaced by ``[redacted]``, runs of 12+ digits masked to their last four, and the deployment's own
    secrets (SECRET_KEY, the digest key, database passwords) removed wherever they appear. Floats that JSON writers
    would put in exponent notation (and NaN, infinities) are kept as their string form (``audit.chain``)."""
    secrets = _known_secrets() if _secrets is None else _secrets
    if isinstance(data, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY_NAME.search(k) else redact(v, _secrets=secrets))
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact(v, _secrets=secrets) for v in data]
    if isinstance(data, str):
        return _redact_str(data, secrets)
    if isinstance(data, int) and not isinstance(data, bool) and abs(data) >= 10**11:
        return _mask_digits(_LONG_DIGITS.search(str(abs(data))))
    if isinstance(data, float) and data and not 1e-4 <= abs(data) < 1e16:
        return repr(data)  # exponent notation is where JSON writers disagree: keep the hash chain's bytes unambiguous
    return data


def audit_event(
    *,
    actor: Actor,
    action: str,
    subject: Any = None,
    subject_type: str = "",
    subject_id: Any = "",
    subject_label: str = "",
    case_id: int | None = None,
    data: dict | None = None,
) -> AuditEvent:
    """Build (not save) an audit event; ``subject`` may be a model instance, which names type, id and label."""
    if subject is not None:
        subject_type = subject_type or subject._meta.label_lower
        subject_id = subject.pk
        subject_label = subject_label or str(subject)[:200]
    return AuditEvent(
        actor_type=actor.kind,
        actor_id=actor.id[:128],
        actor_label=actor.label[:200],
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        subject_label=redact(subject_label)[:200],
        case_id=case_id,
        data=redact(data) if data else {},
        correlation_id=current_correlation_id(),
    )


def audit_record(**kwargs) -> AuditEvent:
    """Write one audit event now (in the caller's transaction)."""
    event = audit_event(**kwargs)
    event.save(force_insert=True)
    return event


def audit_record_many(events: Iterable[AuditEvent]) -> None:
    """Write several events in one statement (the engine writes a step's events together)."""
    events = list(events)
    if events:
        AuditEvent.objects.bulk_create(events)
