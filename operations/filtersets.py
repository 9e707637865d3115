"""One FilterSet per listable model, shared by the portal lists and the API viewsets (STYLE.md). The queryset they
filter always comes from a selector, which has already scoped it to the user."""

from __future__ import annotations

from datetime import timedelta

import django_filters
from django.db.models import Q
from django.utils import timezone

from operations.api.auth import api_client_of
from operations.models import Case, CaseStatus, Escalation, EscalationStatus
from operations.selectors import SLA_AMBER_SECONDS, SLA_RED_SECONDS
from selfops.filters import UtcIsoDateTimeFilter

SLA_STATES = [("ok", "On time"), ("amber", "Due within 4 h"), ("red", "Due within 1 h"), ("breached", "Breached")]
PRIORITIES = [("1", "High"), ("2", "Normal"), ("3", "Low")]
ESCALATION_VIEWS = [
    ("open", "Open"),
    ("retry_pending", "Returned to the agent"),
    ("awaiting_second", "Awaiting a second approval"),
    ("resolved", "Resolved"),
    ("all", "All"),
]


class EscalationFilterSet(django_filters.FilterSet):
    """The escalation queue's filters: which queue, why, how urgent, which workflow, how much, the SLA state and who
    holds it. ``request`` (for "claimed by me") is optional so that scripts can use it too. Without ``view`` or
    ``status`` only open escalations are listed (portal and API alike)."""

    view = django_filters.ChoiceFilter(choices=ESCALATION_VIEWS, method="filter_view", empty_label="Open")
    status = django_filters.ChoiceFilter(choices=EscalationStatus.choices, empty_label="Any status")
    case = django_filters.NumberFilter(field_name="case_id", help_text="Case id.")
    queue = django_filters.CharFilter(field_name="queue")
    reason = django_filters.CharFilter(field_name="reason")
    priority = django_filters.ChoiceFilter(choices=PRIORITIES, empty_label="Any priority")
    workflow = django_filters.CharFilter(field_name="step__workflow__key")
    amount_min = django_filters.NumberFilter(field_name="amount", lookup_expr="gte")
    amount_max = django_filters.NumberFilter(field_name="amount", lookup_expr="lte")
    sla = django_filters.ChoiceFilter(choices=SLA_STATES, method="filter_sla", empty_label="Any SLA state")
    claimed = django_filters.ChoiceFilter(
        choices=[("me", "Claimed by me"), ("unclaimed", "Unclaimed"), ("others", "Claimed by others")],
        method="filter_claimed",
        empty_label="Anyone",
    )

    class Meta:
        model = Escalation
        fields = [
            "view",
            "status",
            "case",
            "queue",
            "reason",
            "priority",
            "workflow",
            "amount_min",
            "amount_max",
            "sla",
            "claimed",
        ]

    @property
    def qs(self):
        qs = super().qs
        if not self.form.cleaned_data.get("view") and not self.form.cleaned_data.get("status"):
            qs = qs.filter(status=EscalationStatus.OPEN)
        return qs

    def filter_view(self, queryset, name, value):
        return {
            "open": queryset.filter(status=EscalationStatus.OPEN),
            "retry_pending": queryset.filter(retry_pending=True),
            "awaiting_second": queryset.filter(status=EscalationStatus.OPEN, pending_approver__isnull=False),
            "resolved": queryset.filter(status=EscalationStatus.RESOLVED),
        }.get(value, queryset)

    def filter_sla(self, queryset, name, value):
        now = timezone.now()
        amber, red = now + timedelta(seconds=SLA_AMBER_SECONDS), now + timedelta(seconds=SLA_RED_SECONDS)
        return {
            "ok": queryset.filter(Q(sla_deadline__gt=amber) | Q(sla_deadline__isnull=True)),
            "amber": queryset.filter(sla_deadline__gt=red, sla_deadline__lte=amber),
            "red": queryset.filter(sla_deadline__gt=now, sla_deadline__lte=red),
            "breached": queryset.filter(sla_deadline__lte=now),
        }[value]

    def filter_claimed(self, queryset, name, value):
        # "me" is a portal user or, through the API with a key, the API client (request.auth)
        unclaimed = Q(claimed_by__isnull=True, claimed_by_client__isnull=True)
        if value == "unclaimed":
            return queryset.filter(unclaimed)
        client = api_client_of(self.request)
        user = getattr(self.request, "user", None)
        if client is not None:
            mine = Q(claimed_by_client=client)
        elif user is not None and user.is_authenticated and user.pk is not None:
            mine = Q(claimed_by=user)
        else:
            return queryset.none()
        return queryset.filter(mine) if value == "me" else queryset.exclude(unclaimed).exclude(mine)


class CaseFilterSet(django_filters.FilterSet):
    """Case search: reference prefix (as typed or upper case), status, workflow key, submission date range (the
    portal's date pickers) or times (the API's ISO 8601 bounds)."""

    reference = django_filters.CharFilter(method="filter_reference", help_text="The reference, or its beginning.")
    status = django_filters.ChoiceFilter(choices=CaseStatus.choices, empty_label="Any status")
    workflow = django_filters.CharFilter(field_name="workflow__key", help_text="Workflow key.")
    submitted = django_filters.DateFromToRangeFilter(field_name="created_at")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Case
        fields = ["reference", "status", "workflow", "submitted", "created_after", "created_before"]

    def filter_reference(self, queryset, name, value):
        # a case-sensitive prefix uses the reference index; references are usually upper case, so try both spellings
        value = value.strip()
        return queryset.filter(Q(reference__startswith=value) | Q(reference__startswith=value.upper()))
