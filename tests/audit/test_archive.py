import json

import pytest
from django.core.management import CommandError, call_command

from audit.archive import verify_archive
from audit.models import AuditEvent
from audit.sealing import seal
from tests.audit.conftest import record

pytestmark = pytest.mark.django_db


def test_an_exported_range_verifies_standalone_and_links_to_the_previous_range(tmp_path, capsys):
    # given a sealed chain of 9 events
    record(9)
    seal()

    # when exporting #1..#4 and #5..#9
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "4", "--out", str(first))
    call_command("audit_export", "--from-seq", "5", "--to-seq", "9", "--out", str(second))

    # then each verifies on its own, and the second's header links to the first's last hash
    a, b = verify_archive(first), verify_archive(second)
    assert a.ok and a.checked == 4 and b.ok and b.checked == 5
    header = json.loads(second.read_text().splitlines()[0])
    assert header["prev_hash"] == a.head_hash == AuditEvent.objects.get(seal_seq=4).hash
    call_command("audit_verify", "--archive", str(second))
    assert "chain intact: 5 events" in capsys.readouterr().out.splitlines()[-1]


def test_an_edited_archive_fails_verification(tmp_path):
    record(5)
    seal()
    out = tmp_path / "r.jsonl"
    call_command("audit_export", "--from-seq", "2", "--to-seq", "5", "--out", str(out))
    lines = out.read_text().splitlines()
    event = json.loads(lines[2])  # #3
    event["data"]["amount"] = "99.99"
    lines[2] = json.dumps(event)
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(CommandError, match="broken at seal_seq 3"):
        call_command("audit_verify", "--archive", str(out))


def test_an_archive_missing_its_last_events_fails(tmp_path):
    record(5)
    seal()
    out = tmp_path / "r.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "5", "--out", str(out))
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-2] + lines[-1:]) + "\n")  # drop #5, keep the digest
    result = verify_archive(out)
    assert not result.ok and result.first_bad_seq == 5


def test_export_refuses_a_range_beyond_the_sealed_head(tmp_path):
    record(2)
    seal()
    with pytest.raises(CommandError, match="sealed up to #2"):
        call_command("audit_export", "--from-seq", "1", "--to-seq", "3", "--out", str(tmp_path / "x.jsonl"))


def test_after_archiving_the_rest_of_the_chain_verifies_from_the_archives_last_hash(tmp_path, no_triggers, capsys):
    # given #1..#3 archived and removed from the database by a DBA
    record(6)
    seal()
    out = tmp_path / "a.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "3", "--out", str(out))
    last_hash = verify_archive(out).head_hash
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seal_seq <= 3")

    # then the remainder verifies from #4 with the archive's last hash, and not with a wrong one
    call_command("audit_verify", "--from-seq", "4", "--prev-hash", last_hash)
    assert "chain intact: 3 events" in capsys.readouterr().out
    with pytest.raises(CommandError, match="broken at seal_seq 4"):
        call_command("audit_verify", "--from-seq", "4", "--prev-hash", "f" * 64)
    with pytest.raises(CommandError, match="broken at seal_seq 1"):
        call_command("audit_verify")


def test_a_digest_verifies_on_a_database_whose_older_range_was_archived(tmp_path, no_triggers, capsys):
    # given the README's path: seal, take a digest at #6, archive #1..#4, and a DBA removes #1..#4
    record(6)
    seal()
    digest = tmp_path / "digest.json"
    call_command("audit_digest", "--out", str(digest))
    archive = tmp_path / "audit-1-4.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "4", "--out", str(archive))
    record(2)
    seal()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seal_seq <= 4")

    # when verifying the database against the digest, starting where the archive ends
    call_command("audit_verify", "--digest", str(digest), "--after-archive", str(archive))

    # then the remaining history up to the digest is proven, and so is the whole remaining chain
    assert "matches the digest at #6" in capsys.readouterr().out
    call_command("audit_verify", "--after-archive", str(archive))
    assert "chain intact: 4 events, head #8" in capsys.readouterr().out
    last_hash = verify_archive(archive).head_hash
    call_command("audit_verify", "--digest", str(digest), "--from-seq", "5", "--prev-hash", last_hash)

    # and without the archive's starting point the digest cannot be proven (the first events are gone)
    with pytest.raises(CommandError, match="broken at seal_seq 1"):
        call_command("audit_verify", "--digest", str(digest))


def test_a_digest_check_after_an_archive_still_catches_a_rewritten_event(tmp_path, no_triggers):
    # given #1..#3 archived and removed, and a digest at #6
    record(6)
    seal()
    digest = tmp_path / "digest.json"
    call_command("audit_digest", "--out", str(digest))
    archive = tmp_path / "a.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "3", "--out", str(archive))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seal_seq <= 3")
        # when #5 is rewritten in the database
        cursor.execute("UPDATE audit_auditevent SET subject_label = 'rewritten' WHERE seal_seq = 5")

    # then the check names #5
    with pytest.raises(CommandError, match="broken at seal_seq 5"):
        call_command("audit_verify", "--digest", str(digest), "--after-archive", str(archive))


def test_after_archive_refuses_an_edited_archive_and_a_digest_older_than_the_database(tmp_path, no_triggers):
    record(5)
    seal()
    old_digest = tmp_path / "old.json"
    call_command("audit_digest", "--out", str(old_digest))  # at #5
    archive = tmp_path / "a.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "5", "--out", str(archive))
    record(2)
    seal()
    other = tmp_path / "b.jsonl"
    call_command("audit_export", "--from-seq", "6", "--to-seq", "7", "--out", str(other))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seal_seq <= 7")

    # a digest at the archive's last event is proven by the archive's last hash
    call_command("audit_verify", "--digest", str(old_digest), "--after-archive", str(archive))

    # a digest inside an archived range is the archive's business
    lines = archive.read_text().splitlines()
    with pytest.raises(CommandError, match="older than the events kept"):
        call_command("audit_verify", "--digest", str(old_digest), "--after-archive", str(other))

    # an edited archive is refused before the database is looked at
    event = json.loads(lines[2])
    event["subject_label"] = "edited"
    lines[2] = json.dumps(event)
    archive.write_text("\n".join(lines) + "\n")
    with pytest.raises(CommandError, match="broken at seal_seq 2"):
        call_command("audit_verify", "--after-archive", str(archive))


def test_a_digest_inside_an_archived_range_is_checked_against_the_archive(tmp_path, capsys):
    # given a digest at #3 and an archive of #1..#5
    record(3)
    seal()
    digest = tmp_path / "d3.json"
    call_command("audit_digest", "--out", str(digest))
    record(2)
    seal()
    archive = tmp_path / "a.jsonl"
    call_command("audit_export", "--from-seq", "1", "--to-seq", "5", "--out", str(archive))

    # then the archive matches the digest
    call_command("audit_verify", "--archive", str(archive), "--digest", str(digest))
    assert "matches the digest at #3" in capsys.readouterr().out

    # and an archive rewritten with recomputed hashes does not
    from audit.chain import CHAINED_FIELDS, canonical_json, link

    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    lines[2]["subject_label"] = "rewritten"  # #2
    prev = lines[0]["prev_hash"]
    for event in lines[1:-1]:
        event["hash"] = prev = link(prev, canonical_json({k: event[k] for k in CHAINED_FIELDS}))
    from audit.digests import sign

    lines[-1] = {"type": "digest", **sign({"seq": 5, "hash": prev, "time": lines[-1]["time"]})}
    archive.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert verify_archive(archive).ok  # consistent on its own (whoever rewrote it held the key)
    with pytest.raises(CommandError, match="broken at seal_seq 3: .*rewritten"):
        call_command("audit_verify", "--archive", str(archive), "--digest", str(digest))
