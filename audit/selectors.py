"""Reading the audit trail: who may, and a keyset-paginated event list that stays fast on millions of rows."""

from __future__ import annotations

from dataclasses import dataclass

from audit.filtersets import AuditEventFilterSet
from audit.models import AuditEvent

AUDITOR_GROUP = "Auditor"
PAGE_SIZE = 50


def is_auditor(user) -> bool:
    return bool(
        user.is_authenticated
        and user.is_active
        and (user.is_superuser or user.groups.filter(name=AUDITOR_GROUP).exists())
    )


@dataclass(frozen=True)
class EventPage:
    events: list[AuditEvent]
    filterset: AuditEventFilterSet
    before: int | None  # the cursor of the next (older) page, or None at the end


def audit_events_page(*, params, before: int | None = None, page_size: int = PAGE_SIZE) -> EventPage:
    """The newest events matching ``params`` (a QueryDict) older than the ``before`` id cursor. Keyset on the primary
    key: no OFFSET and no COUNT, so page 10,000 costs what page 1 does."""
    filterset = AuditEventFilterSet(params, queryset=AuditEvent.objects.all())
    qs = filterset.qs if filterset.is_valid() else AuditEvent.objects.none()
    if before is not None:
        qs = qs.filter(id__lt=before)
    events = list(qs.order_by("-id")[: page_size + 1])
    more = len(events) > page_size
    events = events[:page_size]
    return EventPage(events=events, filterset=filterset, before=events[-1].pk if more else None)
