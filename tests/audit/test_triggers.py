import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent
from audit.sealing import seal
from tests.audit.conftest import record
from tests.conftest import postgres_only

pytestmark = pytest.mark.django_db


def _refused(sql: str, params=()):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_raw_sql_update_of_an_event_is_refused_sealed_or_not():
    # given one unsealed and one sealed event
    sealed_one = record()[0]
    seal()
    unsealed = record()[0]

    # when / then: editing data, the action or the hash is refused
    _refused("UPDATE audit_auditevent SET data = '{}' WHERE id = %s", [unsealed.pk])
    _refused("UPDATE audit_auditevent SET action = 'case.completed' WHERE id = %s", [sealed_one.pk])
    _refused("UPDATE audit_auditevent SET hash = 'x' WHERE id = %s", [sealed_one.pk])
    assert AuditEvent.objects.get(pk=unsealed.pk).data["i"] == 0


def test_raw_sql_delete_is_refused():
    event = record()[0]
    _refused("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    _refused("DELETE FROM audit_auditevent")
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_orm_bulk_update_and_delete_are_refused_too():
    record(2)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.update(subject_label="rewritten")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.all().delete()


@postgres_only()
def test_truncate_is_refused_on_postgresql():
    record()
    _refused("TRUNCATE audit_auditevent")
    assert AuditEvent.objects.exists()


def test_the_sealers_one_time_fill_works_and_a_second_fill_is_refused():
    # given an unsealed event
    event = record()[0]

    # when the seal columns are filled once (as the sealer does)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET seal_seq = 999999, hash = %s WHERE id = %s", ["a" * 64, event.pk])

    # then it holds, and no second fill (or un-fill) is accepted
    assert AuditEvent.objects.get(pk=event.pk).seal_seq == 999999
    _refused("UPDATE audit_auditevent SET seal_seq = 1000000, hash = %s WHERE id = %s", ["b" * 64, event.pk])
    _refused("UPDATE audit_auditevent SET seal_seq = NULL, hash = '' WHERE id = %s", [event.pk])


def test_a_fill_that_also_changes_data_or_leaves_the_hash_empty_is_refused():
    event = record()[0]
    fill = "UPDATE audit_auditevent SET seal_seq = 1, hash = %s, subject_id = 'x' WHERE id = %s"
    _refused(fill, ["a" * 64, event.pk])
    _refused("UPDATE audit_auditevent SET seal_seq = 1, hash = %s, data = '{}' WHERE id = %s", ["a" * 64, event.pk])
    _refused("UPDATE audit_auditevent SET seal_seq = 1 WHERE id = %s", [event.pk])
