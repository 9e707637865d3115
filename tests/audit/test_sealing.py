import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import close_old_connections, connection, transaction

from audit.chain import GENESIS, canonical_json, link, row_to_event, utc_iso
from audit.models import AuditEvent
from audit.sealing import chain_head, seal
from audit.services import audit_event
from audit.verification import verify
from tests.audit.conftest import record
from tests.conftest import postgres_only


def _chain():
    return list(AuditEvent.objects.filter(seal_seq__isnull=False).order_by("seal_seq"))


def test_canonical_json_is_sorted_compact_utf8_with_utc_times():
    from decimal import Decimal

    event = {"b": 1, "a": {"z": Decimal("1.50"), "y": "é"}, "t": dt.datetime(2026, 1, 2, 4, 5, 6, tzinfo=dt.UTC)}
    assert canonical_json(event) == '{"a":{"y":"é","z":"1.50"},"b":1,"t":"2026-01-02T04:05:06.000000Z"}'.encode()
    plus_two = dt.datetime(2026, 1, 2, 6, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert utc_iso(plus_two) == "2026-01-02T04:05:06.000007Z"


@pytest.mark.django_db
def test_seal_numbers_events_in_id_order_and_chains_their_hashes():
    # given events written across several batches
    events = record(7)

    # when sealing in batches of 3
    result = seal(batch_size=3)

    # then every event has a consecutive number in id order and the documented hash
    chain = _chain()
    assert result.sealed == 7
    assert [e.pk for e in chain] == [e.pk for e in events]
    assert [e.seal_seq for e in chain] == list(range(1, 8))
    prev = GENESIS
    with connection.cursor() as cursor:
        from audit.chain import SELECT_COLUMNS

        cursor.execute(f"SELECT {SELECT_COLUMNS} FROM audit_auditevent ORDER BY seal_seq")  # noqa: S608
        rows = cursor.fetchall()
    for row in rows:
        prev = link(prev, canonical_json(row_to_event(row)))
        assert prev == row[13]
    assert (result.head_seq, result.head_hash) == (7, prev) == chain_head()
    assert seal().sealed == 0  # nothing left


@pytest.mark.django_db
def test_an_event_committed_late_with_a_lower_id_is_sealed_in_a_later_batch_not_skipped():
    # given two events, the second with an id far above the first, both sealed
    first = record()[0]
    third = audit_event(actor=first_actor(), action="reference.loaded", subject_type="t", subject_id="3")
    third.pk = first.pk + 100
    third.save(force_insert=True)
    seal()

    # when an event with an id between them appears afterwards (its transaction committed late)
    second = audit_event(actor=first_actor(), action="reference.loaded", subject_type="t", subject_id="2")
    second.pk = first.pk + 50
    second.save(force_insert=True)
    result = seal()

    # then it is sealed next, after the higher id, and the chain verifies
    assert result.sealed == 1
    assert AuditEvent.objects.get(pk=second.pk).seal_seq == AuditEvent.objects.get(pk=third.pk).seal_seq + 1
    assert verify().ok


def first_actor():
    from audit.actors import Actor

    return Actor.system("test")


@postgres_only()
@pytest.mark.django_db(transaction=True)
def test_a_transaction_committing_after_the_sealer_ran_gets_sealed_by_the_next_run():
    # given a writer holding an uncommitted event (a low id) while a later event commits
    inserted, release = threading.Event(), threading.Event()
    late_ids = []

    def slow_writer():
        try:
            with transaction.atomic():
                late_ids.append(record()[0].pk)
                inserted.set()
                release.wait(10)
        finally:
            close_old_connections()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert inserted.wait(10)
    later = record()[0]
    assert later.pk > late_ids[0]

    # when the sealer runs before the slow writer commits, and again after
    first = seal()
    release.set()
    writer.join(10)
    second = seal()

    # then the later event was sealed first, the late one in the next run, and nothing was skipped
    assert first.sealed == 1 and second.sealed == 1
    assert AuditEvent.objects.get(pk=late_ids[0]).seal_seq == AuditEvent.objects.get(pk=later.pk).seal_seq + 1
    assert verify().ok


@postgres_only()
@pytest.mark.django_db(transaction=True)
def test_two_sealers_at_once_never_interleave():
    # given a backlog
    with transaction.atomic():
        record(600)
    errors = []

    def sealer():
        try:
            seal(batch_size=25)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    # when three sealers run at once
    threads = [threading.Thread(target=sealer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # then every event is sealed once, numbered 1..600, and the chain verifies
    assert errors == []
    assert sorted(AuditEvent.objects.values_list("seal_seq", flat=True)) == list(range(1, 601))
    assert verify().ok


@pytest.mark.django_db
def test_audit_seal_command_seals_the_backlog(capsys):
    record(3)
    call_command("audit_seal", "--batch-size", "2")
    assert "sealed 3 events; head #3" in capsys.readouterr().out
    assert not AuditEvent.objects.filter(seal_seq__isnull=True).exists()


@pytest.mark.django_db
def test_migrate_installs_the_minute_sealer_and_the_daily_digest():
    from django_q.models import Schedule

    sealer = Schedule.objects.get(func="audit.tasks.seal_events")
    assert (sealer.schedule_type, sealer.minutes, sealer.repeats) == (Schedule.MINUTES, 1, -1)
    assert Schedule.objects.get(func="audit.tasks.export_daily_digest").schedule_type == Schedule.DAILY


def test_the_seal_interval_is_a_few_seconds_by_default():
    from selfops.settings import SELFOPS

    assert 1 <= SELFOPS["AUDIT_SEAL_INTERVAL"] <= 10


@pytest.mark.django_db
def test_the_scheduled_tasks_seal_and_export_a_digest(settings, tmp_path):
    from audit import tasks

    settings.AUDIT_DIGEST_DIR = tmp_path / "digests"
    record(2)
    path = tasks.export_daily_digest()
    assert '"seq": 2' in Path(path).read_text()
    record(1)
    assert tasks.seal_events() == 1


@pytest.mark.django_db
def test_a_worker_seals_when_its_interval_has_passed_and_not_before(monkeypatch):
    from audit import sealing

    monkeypatch.setattr(sealing, "_last_seal_started", 0.0)
    record(3)
    assert sealing.seal_if_due(0.3) == 3  # due: nothing sealed yet by this process
    record(2)
    assert sealing.seal_if_due(0.3) == 0  # not yet
    time.sleep(0.35)
    assert sealing.seal_if_due(0.3) == 2
    assert verify().ok


@pytest.mark.django_db
def test_the_engine_task_seals_the_chain_as_it_goes(claims_workflow, claim_generator, settings, monkeypatch):
    # given a claim submitted and a seal interval that has passed
    from audit import sealing
    from operations import tasks
    from tests.helpers import submit

    monkeypatch.setattr(sealing, "_last_seal_started", 0.0)
    case = submit(claim_generator.claim("straight_through"))

    # when a worker runs its task
    tasks.advance_case(case.pk)

    # then the events of its steps are sealed by the worker itself
    assert AuditEvent.objects.filter(case_id=case.pk).count() > 3
    assert not AuditEvent.objects.filter(seal_seq__isnull=True).exists()


@postgres_only()
@pytest.mark.django_db(transaction=True)
def test_a_worker_gives_way_at_once_to_a_sealer_at_work(monkeypatch):
    # given another sealer holding the sealer's lock
    import psycopg

    from audit import sealing
    from operations.bench.cluster import database_url

    record(2)
    monkeypatch.setattr(sealing, "_last_seal_started", 0.0)
    with psycopg.connect(database_url().replace("postgres://", "postgresql://", 1)) as other:
        other.execute("BEGIN")
        other.execute("SELECT pg_advisory_xact_lock(%s)", [sealing.SEALER_LOCK_KEY])

        # when a worker's seal is due, it returns at once without waiting
        t0 = time.monotonic()
        assert sealing.seal_if_due(0.0) == 0
        assert time.monotonic() - t0 < 2
        other.execute("ROLLBACK")

    # and the next one seals
    assert sealing.seal_if_due(0.0) == 2


def test_the_fast_canonical_form_equals_the_documented_one():
    # given an event with the kinds of values the writer stores
    from audit.chain import canonical_json_reference
    from audit.services import redact

    data = redact(
        {
            "proposal": {
                "amount": "1234.50",
                "confidence": 0.87,
                "outcome": "assessed",
                "data": {"z": [1, None, True]},
            },
            "tiny": 1e-7,
            "huge": 1e300,
            "text": 'é \u2028 \x1f "quoted" / \\',
            "nested": {"b": 2, "a": 1},
        }
    )
    event = {"seal_seq": 1, "id": 7, "occurred_at": "2026-11-25T20:01:02.000300Z", "case_id": None, "data": data}

    # then orjson's bytes are exactly json.dumps(sort_keys, compact, ensure_ascii=False)
    assert canonical_json(event) == canonical_json_reference(event)
    assert data["tiny"] == "1e-07" and data["huge"] == "1e+300"


def test_utc_iso_normalises_database_time_texts():
    assert utc_iso("2026-11-25 20:01:02.0003") == "2026-11-25T20:01:02.000300Z"
    assert utc_iso("2026-11-25 20:01:02") == "2026-11-25T20:01:02.000000Z"
    assert utc_iso("2026-11-25T20:01:02.25") == "2026-11-25T20:01:02.250000Z"
    assert utc_iso("2026-11-25T15:01:02-05:00") == "2026-11-25T20:01:02.000000Z"
    assert utc_iso("2026-11-25T21:01:02.5+01:00") == "2026-11-25T20:01:02.500000Z"


@pytest.mark.django_db
def test_the_fast_path_writes_the_canonical_bytes():
    # given events whose texts need every kind of JSON escaping, times with and without microseconds, with and
    # without a case, and data whose keys sort differently by length, case and accent

    from audit.actors import Actor
    from audit.chain import SELECT_COLUMNS, fast_columns, fast_link

    odd = 'q"b\\s/ \t\n\r\x08\x0c \x01\x1f\x7f é ✓ \u2028 😀'
    plus_two = dt.timezone(dt.timedelta(hours=2))
    for i, when in enumerate(
        [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, 3, 4, 5, 7, plus_two)]
    ):
        event = audit_event(
            actor=Actor(kind="user", id=odd, label=odd),
            action="reference.loaded",
            subject_type="t" + odd,
            subject_id=str(i),
            subject_label=odd,
            case_id=None if i else 42,
            data={"é": odd, "Z": [1, 0.87, None, True, "1e-07"], "a": {"bb": 1, "b": {"ä": "x", "a": odd}}, "": 0},
        )
        event.occurred_at = when
        event.correlation_id = odd[:60]
        event.save()
    seal()

    # then the sealer's hashes (the fast path) equal the documented definition computed from an event dict
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {SELECT_COLUMNS} FROM audit_auditevent ORDER BY seal_seq")  # noqa: S608
        rows = cursor.fetchall()
        cursor.execute(f"SELECT {fast_columns(connection.vendor)} FROM audit_auditevent ORDER BY seal_seq")  # noqa: S608
        fast_rows = cursor.fetchall()
    prev = GENESIS
    for row, fast in zip(rows, fast_rows, strict=True):
        expected = link(prev, canonical_json(row_to_event(row)))
        assert fast_link(prev, fast, row[0], connection.vendor) == expected == row[13]
        prev = expected
    assert verify().ok
