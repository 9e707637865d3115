"""Export a sealed range of the chain to a JSON-lines file that verifies on its own, for cold storage.

Line 1 is a header (the range, the hash of the event before it, the canonical version); then one line per event with
its canonical fields, ``seal_seq`` and ``hash``; the last line is a signed digest of the range's last event. Anyone can
recompute ``hash = sha256(prev_hash || canonical_json(event))`` along the file, and tie consecutive archives together:
each header's ``prev_hash`` is the previous archive's last hash.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.db import connection, transaction
from django.utils import timezone

from audit.chain import CANONICAL_VERSION, CHAINED_FIELDS, GENESIS, select_columns, to_event, utc_iso
from audit.digests import sign
from audit.triggers import TABLE
from audit.verification import CHUNK, VerifyResult, verify_rows


class ArchiveError(Exception):
    pass


def export_range(*, from_seq: int, to_seq: int, out: str | Path) -> int:
    """Write sealed events ``from_seq``..``to_seq`` (inclusive) to ``out``; returns how many were written."""
    if from_seq < 1 or to_seq < from_seq:
        raise ArchiveError("the range must satisfy 1 <= from_seq <= to_seq")
    written = 0
    with transaction.atomic(), Path(out).open("w", encoding="utf-8") as f:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT hash FROM {TABLE} WHERE seal_seq = %s", [from_seq - 1])  # noqa: S608  # nosec B608
            row = cursor.fetchone()
            if from_seq > 1 and row is None:
                raise ArchiveError(f"event #{from_seq - 1} (the range's predecessor) is not sealed")
            cursor.execute(f"SELECT MAX(seal_seq) FROM {TABLE}")  # noqa: S608  # nosec B608
            head = cursor.fetchone()[0] or 0
        if head < to_seq:
            raise ArchiveError(f"the chain is sealed up to #{head}, not #{to_seq}")
        header = {
            "type": "header",
            "canonical_version": CANONICAL_VERSION,
            "from_seq": from_seq,
            "to_seq": to_seq,
            "prev_hash": row[0] if row else GENESIS,
            "fields": list(CHAINED_FIELDS),
            "exported_at": utc_iso(timezone.now()),
        }
        f.write(json.dumps(header, separators=(",", ":")) + "\n")
        last_hash = header["prev_hash"]
        with connection.chunked_cursor() as cursor:
            cursor.execute(
                f"SELECT {select_columns(connection.vendor)} FROM {TABLE} "  # noqa: S608  # nosec B608
                "WHERE seal_seq BETWEEN %s AND %s ORDER BY seal_seq",
                [from_seq, to_seq],
            )
            while chunk := cursor.fetchmany(CHUNK):
                for r in chunk:
                    _, event, stored = to_event(r, connection.vendor)
                    line = {"type": "event", **event, "hash": stored}
                    f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
                    last_hash = stored
                    written += 1
        digest = sign({"seq": to_seq, "hash": last_hash, "time": utc_iso(timezone.now())})
        f.write(json.dumps({"type": "digest", **digest}, separators=(",", ":")) + "\n")
    return written


def archive_tail(path: str | Path) -> tuple[int, str]:
    """Where the database's chain continues after an archive: (the sequence number after its range, its last hash,
    as its signed closing digest states). Verify the archive first (``verify_archive``)."""
    from audit.digests import check_signature

    with Path(path).open(encoding="utf-8") as f:
        first, last = None, None
        for line in f:
            if line.strip():
                first, last = first or line, line
    header, digest = json.loads(first or "{}"), json.loads(last or "{}")
    if header.get("type") != "header" or digest.get("type") != "digest":
        raise ArchiveError(f"{path} is not an archive (a header line, events, a closing digest)")
    check_signature(digest)
    return int(header["to_seq"]) + 1, digest["hash"]


def verify_archive(path: str | Path, *, against: dict | None = None) -> VerifyResult:
    """Verify an exported range on its own: consecutive, every hash recomputed, and the closing digest's signature
    and hash (raises ``ArchiveError`` for a malformed file, ``DigestError`` for a bad signature). With ``against``, a
    published digest of an event in the range (already signature-checked), also prove the range matches it."""
    from audit.digests import check_signature

    with Path(path).open(encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or lines[0].get("type") != "header":
        raise ArchiveError(f"{path} has no header line")
    header, digest = lines[0], lines[-1]
    if digest.get("type") != "digest":
        raise ArchiveError(f"{path} has no closing digest: truncated?")
    check_signature(digest)
    rows = (
        (e["seal_seq"], {k: e[k] for k in CHAINED_FIELDS}, e["hash"]) for e in lines[1:-1] if e.get("type") == "event"
    )
    pinned = int(against["seq"]) if against else None
    if pinned is not None and not header["from_seq"] <= pinned <= header["to_seq"]:
        raise ArchiveError(
            f"the digest (#{pinned}) is outside the archive's range #{header['from_seq']}..#{header['to_seq']}"
        )
    remember = [pinned] if pinned is not None else []
    result = verify_rows(rows, start_seq=header["from_seq"], prev_hash=header["prev_hash"], remember=remember)
    if result.ok and (result.head_seq != header["to_seq"] or digest["seq"] != header["to_seq"]):
        result.ok, result.first_bad_seq = False, (result.head_seq or header["from_seq"] - 1) + 1
        result.problem = f"the archive ends at #{result.head_seq}, its header and digest say #{header['to_seq']}"
    elif result.ok and digest["hash"] != result.head_hash:
        result.ok, result.first_bad_seq = False, header["to_seq"]
        result.problem = "the archive's last hash differs from its signed digest"
    elif result.ok and pinned is not None and result.hashes_at.get(pinned) != against["hash"]:
        result.ok, result.first_bad_seq = False, pinned
        result.problem = f"the recomputed hash at #{pinned} differs from the digest's: the archive was rewritten"
    return result
