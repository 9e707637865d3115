"""FilterSets of the API lists (the portal's own, ``operations/filtersets.py``, was not on this branch yet: when both
exist they should become one, used by the portal and the API alike)."""

import django_filters

from audit.models import AuditEvent
from operations.models import Case, CaseStatus, Escalation, EscalationStatus
from selfops.filters import UtcIsoDateTimeFilter


class CaseFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=CaseStatus.choices)
    workflow = django_filters.CharFilter(field_name="workflow__key", help_text="Workflow key.")
    reference = django_filters.CharFilter(help_text="Your reference (exact).")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Case
        fields = ["status", "workflow", "reference", "created_after", "created_before"]


class EscalationFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=EscalationStatus.choices)
    queue = django_filters.CharFilter()
    reason = django_filters.CharFilter()
    case = django_filters.NumberFilter(field_name="case_id")
    priority = django_filters.NumberFilter()

    class Meta:
        model = Escalation
        fields = ["status", "queue", "reason", "case", "priority"]


class AuditEventFilterSet(django_filters.FilterSet):
    subject_type = django_filters.CharFilter(help_text="e.g. `operations.case`, `operations.escalation`.")
    subject_id = django_filters.CharFilter()
    case = django_filters.NumberFilter(field_name="case_id")
    action = django_filters.CharFilter()

    class Meta:
        model = AuditEvent
        fields = ["subject_type", "subject_id", "case", "action"]
