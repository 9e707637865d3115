import pytest
from django.db import connection

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from audit.selectors import audit_events_page
from tests.audit.conftest import record
from tests.conftest import postgres_only

pytestmark = pytest.mark.django_db


def _plan(params: dict) -> str:
    from django.http import QueryDict

    from audit.filtersets import AuditEventFilterSet

    query = QueryDict(mutable=True)
    query.update(params)
    qs = AuditEventFilterSet(query, queryset=AuditEvent.objects.all()).qs.order_by()  # the filter, not the order
    sql, sql_params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a small test table: ask which index the planner can use
        cursor.execute(f"EXPLAIN {sql}", sql_params)
        return "\n".join(row[0] for row in cursor.fetchall())


@postgres_only()
@pytest.mark.parametrize(
    ("params", "index"),
    [
        ({"actor": "claims.assessment@1.0"}, "audit_actor_id_idx"),
        ({"actor": "claims.assessment"}, "audit_actor_label_idx"),
        ({"action": AuditAction.STEP_DECIDED}, "audit_auditevent_action"),
        ({"subject_id": "42"}, "audit_subject_id_idx"),
        ({"subject_type": "operations.case", "subject_id": "42"}, "audit_subject_id_idx"),
        ({"occurred_after": "2026-01-01T00:00:00Z"}, "audit_auditevent_occurred_at"),
    ],
)
def test_each_browser_filter_finds_its_rows_through_an_index(params, index):
    record(3, actor=Actor.agent("claims.assessment", "1.0"))
    plan = _plan(params)
    assert index in plan, plan
    if params.get("actor"):  # the actor filter matches id or label: both through their index
        assert "audit_actor_id_idx" in plan and "audit_actor_label_idx" in plan, plan


def test_the_actor_filter_matches_id_or_label():
    record(2, actor=Actor.agent("claims.assessment", "1.0"))
    record(1, actor=Actor.system("sweeper"))
    assert len(audit_events_page(params={"actor": "claims.assessment"}).events) == 2
    assert len(audit_events_page(params={"actor": "claims.assessment@1.0"}).events) == 2
    assert len(audit_events_page(params={"actor": "sweeper"}).events) == 1
