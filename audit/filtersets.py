"""Filtering audit events: one FilterSet for the auditor's page and the API."""

import django_filters
from django.db.models import Q

from audit.models import AuditAction, AuditEvent
from selfops.filters import UtcIsoDateTimeFilter


class AuditEventFilterSet(django_filters.FilterSet):
    actor = django_filters.CharFilter(method="filter_actor", label="Actor (id or name)")
    action = django_filters.ChoiceFilter(choices=AuditAction.choices)
    subject_type = django_filters.CharFilter(label="Subject type")
    subject_id = django_filters.CharFilter(label="Subject id")
    case_id = django_filters.NumberFilter(label="Case")
    occurred_after = UtcIsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte", label="From")
    occurred_before = UtcIsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt", label="Until")

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "subject_type", "subject_id", "case_id", "occurred_after", "occurred_before"]

    def filter_actor(self, queryset, name, value):
        return queryset.filter(Q(actor_id=value) | Q(actor_label=value))
