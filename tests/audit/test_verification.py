import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from audit import triggers
from audit.chain import canonical_json, link, row_to_event
from audit.models import AuditEvent, VerificationRun
from audit.sealing import seal
from audit.verification import verify, verify_status
from tests.audit.conftest import record

pytestmark = pytest.mark.django_db


@pytest.fixture
def sealed_chain():
    events = record(10)
    seal(batch_size=4)
    return {e.pk: AuditEvent.objects.get(pk=e.pk).seal_seq for e in events}


def _sql(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_an_intact_chain_verifies_and_the_run_is_recorded(sealed_chain):
    result = verify()
    assert result.ok and result.checked == 10 and result.head_seq == 10
    run = VerificationRun.objects.latest()
    assert run.ok and run.checked == 10 and run.head_hash == AuditEvent.objects.get(seal_seq=10).hash


def test_changing_one_byte_of_a_sealed_events_data_is_detected(sealed_chain, no_triggers):
    # given event #6's amount changed by one character, with triggers lifted by someone with database access
    event = AuditEvent.objects.get(seal_seq=6)
    event.data["amount"] = "12.51"
    _sql("UPDATE audit_auditevent SET data = %s WHERE id = %s", [json.dumps(event.data), event.pk])

    # when verifying, then #6 is named
    result = verify()
    assert not result.ok and result.first_bad_seq == 6 and result.checked == 5


def test_changing_a_label_or_the_time_is_detected(sealed_chain, no_triggers):
    _sql("UPDATE audit_auditevent SET actor_label = 'someone else' WHERE seal_seq = 3")
    assert verify().first_bad_seq == 3


def test_deleting_one_sealed_event_is_detected(sealed_chain, no_triggers):
    _sql("DELETE FROM audit_auditevent WHERE seal_seq = 4")
    result = verify()
    assert not result.ok and result.first_bad_seq == 4 and "missing" in result.problem


def test_inserting_one_in_the_middle_with_a_valid_looking_seal_is_detected(sealed_chain, no_triggers):
    # given the tail renumbered to make room at #5, and a forged event there whose own hash is computed correctly
    for seq in range(10, 4, -1):
        _sql("UPDATE audit_auditevent SET seal_seq = %s WHERE seal_seq = %s", [seq + 1, seq])
    forged = record()[0]
    with connection.cursor() as cursor:
        from audit.chain import SELECT_COLUMNS

        cursor.execute(f"SELECT {SELECT_COLUMNS} FROM audit_auditevent WHERE id = %s", [forged.pk])  # noqa: S608
        row = (5, *cursor.fetchone()[1:])
    forged_hash = link(AuditEvent.objects.get(seal_seq=4).hash, canonical_json(row_to_event(row)))
    _sql("UPDATE audit_auditevent SET seal_seq = 5, hash = %s WHERE id = %s", [forged_hash, forged.pk])

    # when verifying, then the forged event passes but the next one (the old #5, now #6) breaks
    result = verify()
    assert not result.ok and result.first_bad_seq == 6


def test_audit_verify_command_exits_non_zero_naming_the_first_bad_seq(sealed_chain, no_triggers, capsys):
    call_command("audit_verify")
    assert "chain intact: 10 events" in capsys.readouterr().out
    _sql("UPDATE audit_auditevent SET subject_id = 'x' WHERE seal_seq = 7")
    with pytest.raises(CommandError, match="broken at seal_seq 7"):
        call_command("audit_verify")


def test_verify_status_reports_head_backlog_and_last_run(sealed_chain):
    # given a sealed chain, two unsealed events and no verification yet
    record(2)
    status = verify_status()
    assert status.sealed_up_to == 10 and status.unsealed_backlog == 2 and status.last_run is None
    assert status.unsealed_backlog_exact
    assert status.head_hash == AuditEvent.objects.get(seal_seq=10).hash

    # when verified, then the status carries the run
    verify()
    status = verify_status().as_dict()
    assert status["last_verification"]["ok"] is True and status["last_verification"]["head_seq"] == 10


def test_an_empty_chain_verifies():
    assert verify().ok and verify_status().sealed_up_to is None


def test_verify_status_counts_the_backlog_only_up_to_a_bound(sealed_chain, monkeypatch):
    from audit import verification

    # given three unsealed events and a bound of two (ten million unsealed events must not slow the panel)
    record(3)
    monkeypatch.setattr(verification, "BACKLOG_COUNT_LIMIT", 2)

    status = verify_status().as_dict()

    assert (status["unsealed_backlog"], status["unsealed_backlog_exact"]) == (2, False)


@pytest.fixture
def ranges_of_seven(monkeypatch):
    """Verification split into ranges of 7 over 3 processes, as a million events would be (the threshold lowered)."""
    from audit import verification

    monkeypatch.setattr(verification, "PARALLEL_MIN_EVENTS", 1)
    with transaction.atomic():
        record(40)
    seal(batch_size=16)
    sequential = verify(workers=1, record=False)
    assert verification._plan(1, 40, None, 3)[:2] == [(1, 7), (8, 14)]
    assert verification._can_fork()  # outside a transaction, on a database other processes can open
    return sequential


@pytest.mark.django_db(transaction=True)
def test_parallel_ranges_verify_an_intact_chain_like_one_process(ranges_of_seven):
    result = verify(workers=3)
    assert result.ok and result.checked == 40 == result.head_seq
    assert result.head_hash == ranges_of_seven.head_hash == AuditEvent.objects.get(seal_seq=40).hash
    assert VerificationRun.objects.latest().checked == 40
    digest_seq = verify(workers=3, up_to=20, remember=[20], record=False)
    assert digest_seq.ok and digest_seq.hashes_at[20] == AuditEvent.objects.get(seal_seq=20).hash


@pytest.mark.django_db(transaction=True)
def test_parallel_ranges_name_the_lowest_break_across_ranges(ranges_of_seven):
    triggers.remove(connection)
    try:
        # given an edit at the first event of the second range and another in a later range
        _sql("UPDATE audit_auditevent SET subject_label = 'edited' WHERE seal_seq IN (8, 30)")
        result = verify(workers=3)
        assert not result.ok and result.first_bad_seq == 8 and result.checked == 7

        # given the last event of a range removed as well, before the edit
        _sql("DELETE FROM audit_auditevent WHERE seal_seq = 7")
        result = verify(workers=3)
        assert not result.ok and result.first_bad_seq == 7 and "missing" in result.problem

        # and the first event of the chain's first range, with the same answer as one process
        _sql("DELETE FROM audit_auditevent WHERE seal_seq = 1")
        assert (verify(workers=3).first_bad_seq, verify(workers=1).first_bad_seq) == (1, 1)
    finally:
        triggers.install(connection)


@pytest.mark.django_db(transaction=True)
def test_audit_verify_command_uses_the_parallel_path(ranges_of_seven, capsys):
    triggers.remove(connection)
    try:
        _sql("UPDATE audit_auditevent SET data = %s WHERE seal_seq = 22", ['{"i": 99}'])
    finally:
        triggers.install(connection)
    with pytest.raises(CommandError, match="broken at seal_seq 22"):
        call_command("audit_verify", "--workers", "3")
