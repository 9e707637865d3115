"""Writing to the audit trail. Callers write events inside the transaction of the change they record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from audit.actors import Actor
from audit.context import current_correlation_id
from audit.models import AuditEvent


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
        subject_label=subject_label[:200],
        case_id=case_id,
        data=data or {},
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
