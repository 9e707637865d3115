import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from audit import digests
from audit.chain import GENESIS, SELECT_COLUMNS, canonical_json, link, row_to_event
from audit.models import AuditEvent
from audit.sealing import seal
from audit.verification import verify
from tests.audit.conftest import record

pytestmark = pytest.mark.django_db


def _recompute_whole_chain():
    """What a thorough forger does after editing: recompute every hash so the chain verifies on its own."""
    prev = GENESIS
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {SELECT_COLUMNS} FROM audit_auditevent WHERE seal_seq IS NOT NULL ORDER BY seal_seq")  # noqa: S608
        rows = cursor.fetchall()
        for row in rows:
            prev = link(prev, canonical_json(row_to_event(row)))
            cursor.execute("UPDATE audit_auditevent SET hash = %s WHERE id = %s", [prev, row[1]])


def test_audit_digest_prints_the_signed_head(capsys):
    record(3)
    seal()
    call_command("audit_digest")
    digest = json.loads(capsys.readouterr().out)
    assert digest["seq"] == 3 and digest["hash"] == AuditEvent.objects.get(seal_seq=3).hash
    assert digest["time"].endswith("Z") and digest["alg"] == "HMAC-SHA256"
    digests.check_signature(digest)


def test_a_digest_signed_with_another_key_or_altered_is_refused(tmp_path, settings, capsys):
    record(2)
    seal()
    out = tmp_path / "d.json"
    call_command("audit_digest", "--out", str(out))
    digest = json.loads(out.read_text())

    altered = {**digest, "seq": 1}
    with pytest.raises(digests.DigestError):
        digests.check_signature(altered)
    settings.AUDIT_DIGEST_KEY = "another key entirely"
    with pytest.raises(CommandError, match="signature"):
        call_command("audit_verify", "--digest", str(out))


def test_verify_against_a_digest_catches_a_history_rewritten_with_recomputed_hashes(tmp_path, no_triggers, capsys):
    # given a digest taken at #5, and five more events after it
    record(5)
    seal()
    out = tmp_path / "digest.json"
    call_command("audit_digest", "--out", str(out))
    record(5)
    seal()
    call_command("audit_verify", "--digest", str(out))
    assert "matches the digest at #5" in capsys.readouterr().out

    # when event #2 is rewritten and the whole chain recomputed
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET subject_label = 'rewritten' WHERE seal_seq = 2")
    _recompute_whole_chain()

    # then the chain alone verifies, but not against the digest
    assert verify().ok
    with pytest.raises(CommandError, match="broken at seal_seq 5: .*rewritten"):
        call_command("audit_verify", "--digest", str(out))


def test_verify_against_a_digest_catches_a_truncated_chain(tmp_path, no_triggers):
    record(4)
    seal()
    out = tmp_path / "digest.json"
    call_command("audit_digest", "--out", str(out))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seal_seq = 4")
    assert verify().ok  # the head is gone without trace, except in the digest
    with pytest.raises(CommandError, match="broken at seal_seq 4"):
        call_command("audit_verify", "--digest", str(out))


def test_export_digest_writes_a_file_into_the_configured_folder(settings, tmp_path):
    settings.AUDIT_DIGEST_DIR = tmp_path / "digests"
    record(1)
    seal()
    path = digests.export_digest()
    assert path.parent == tmp_path / "digests"
    assert digests.load(path)["seq"] == 1


def test_without_a_configured_key_the_digest_key_derives_from_secret_key(settings):
    settings.AUDIT_DIGEST_KEY = ""
    first = digests.digest_key()
    settings.SECRET_KEY = "another-secret-key-for-this-test"
    assert digests.digest_key() != first
    settings.AUDIT_DIGEST_KEY = "explicit"
    assert digests.digest_key() == b"explicit"
