"""The verifier: recomputes the hash chain from the first sealed event and names the first sequence number that breaks.

A break is a hash that does not match its recomputation (an edited event, or any event after an inserted or removed
one) or a gap in the sequence (a removed event). A recomputed chain that was rewritten throughout still verifies on
its own; a signed digest published earlier catches that (``audit.digests``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from audit.chain import GENESIS, canonical_json, link, select_columns, to_event
from audit.models import AuditEvent, VerificationRun
from audit.sealing import chain_head
from audit.triggers import TABLE

CHUNK = 20_000


@dataclass
class VerifyResult:
    ok: bool
    checked: int = 0
    head_seq: int | None = None
    head_hash: str = ""
    first_bad_seq: int | None = None
    problem: str = ""
    hashes_at: dict[int, str] = field(default_factory=dict)  # recomputed hash at the sequence numbers asked for

    def describe(self) -> str:
        if self.ok:
            return f"chain intact: {self.checked} events, head #{self.head_seq} {self.head_hash}"
        return f"chain broken at seal_seq {self.first_bad_seq}: {self.problem}"


def verify_rows(
    rows: Iterable, *, start_seq: int = 1, prev_hash: str = GENESIS, remember: Iterable[int] = ()
) -> VerifyResult:
    """Check ``(seal_seq, event dict, stored hash)`` triples, by seal_seq, chain from ``prev_hash`` starting at
    ``start_seq``."""
    remember = set(remember)
    result = VerifyResult(ok=True)
    expected = start_seq
    prev = prev_hash
    checked = 0
    for seq, event, stored in rows:
        if seq != expected:
            result.ok = False
            result.first_bad_seq = expected
            result.problem = f"expected event #{expected}, found #{seq}: missing or renumbered events"
            break
        recomputed = link(prev, canonical_json(event))
        if recomputed != stored:
            result.ok = False
            result.first_bad_seq = seq
            result.problem = "stored hash does not match the recomputed hash: the event or its predecessors changed"
            break
        if seq in remember:
            result.hashes_at[seq] = recomputed
        prev = recomputed
        expected += 1
        checked += 1
    result.checked = checked
    result.head_seq = expected - 1 if checked else None
    result.head_hash = prev if checked else ""
    return result


def _stream(up_to: int | None, from_seq: int = 1):
    where = "seal_seq >= %s" + (" AND seal_seq <= %s" if up_to is not None else "")
    params = [from_seq] + ([up_to] if up_to is not None else [])
    # A server-side cursor on PostgreSQL: a million rows stream in chunks instead of landing in memory at once.
    # A helper thread fetches the next chunk while this one is hashed, so the database's work (mostly jsonb output)
    # and ours overlap; it touches only the driver's cursor, and only it does.
    vendor = connection.vendor
    with connection.chunked_cursor() as cursor:
        columns = select_columns(vendor)
        cursor.execute(f"SELECT {columns} FROM {TABLE} WHERE {where} ORDER BY seal_seq", params)  # noqa: S608  # nosec B608
        chunks: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def fetch():
            try:
                while not stop.is_set():
                    chunk = cursor.cursor.fetchmany(CHUNK)
                    chunks.put(chunk)
                    if not chunk:
                        return
            except BaseException as exc:
                chunks.put(exc)

        fetcher = threading.Thread(target=fetch, name="audit-verify-fetch", daemon=True)
        fetcher.start()
        try:
            while True:
                chunk = chunks.get()
                if isinstance(chunk, BaseException):
                    raise chunk
                if not chunk:
                    return
                for row in chunk:
                    yield to_event(row, vendor)
        finally:
            stop.set()
            while fetcher.is_alive():  # unblock a fetcher waiting on a full queue, then let it finish
                with contextlib.suppress(queue.Empty):
                    chunks.get(timeout=0.1)
            fetcher.join()


def verify(
    *,
    up_to: int | None = None,
    from_seq: int = 1,
    prev_hash: str = GENESIS,
    remember: Iterable[int] = (),
    record: bool = True,
) -> VerifyResult:
    """Recompute the chain (from ``from_seq``, whose predecessor's hash is ``prev_hash``: for a database whose older
    events were archived; up to ``up_to``) and record the run."""
    started, t0 = timezone.now(), time.perf_counter()
    with transaction.atomic():
        result = verify_rows(_stream(up_to, from_seq), start_seq=from_seq, prev_hash=prev_hash, remember=remember)
    if result.ok and up_to is not None and result.head_seq != up_to:
        result.ok = False
        result.first_bad_seq = (result.head_seq or 0) + 1
        result.problem = f"the chain ends at #{result.head_seq}, before #{up_to}"
    if record:
        VerificationRun.objects.create(
            started_at=started,
            finished_at=timezone.now(),
            ok=result.ok,
            checked=result.checked,
            head_seq=result.head_seq,
            head_hash=result.head_hash,
            first_bad_seq=result.first_bad_seq,
            problem=result.problem,
            duration_ms=(time.perf_counter() - t0) * 1000,
        )
    return result


@dataclass(frozen=True)
class VerifyStatus:
    sealed_up_to: int | None
    head_hash: str
    unsealed_backlog: int
    last_run: VerificationRun | None
    unsealed_backlog_exact: bool = True  # False: the backlog is at least unsealed_backlog (a bounded count)

    def as_dict(self) -> dict:
        run = self.last_run
        return {
            "sealed_up_to": self.sealed_up_to,
            "head_hash": self.head_hash if self.sealed_up_to else "",
            "unsealed_backlog": self.unsealed_backlog,
            "unsealed_backlog_exact": self.unsealed_backlog_exact,
            "last_verification": None
            if run is None
            else {
                "at": run.finished_at or run.started_at,
                "ok": run.ok,
                "checked": run.checked,
                "head_seq": run.head_seq,
                "first_bad_seq": run.first_bad_seq,
                "problem": run.problem,
            },
        }


def verify_status() -> VerifyStatus:
    """The chain at a glance, for the portal panel and the API: sealed up to, head hash, backlog, last verification."""
    head_seq, head_hash = chain_head()
    # counted up to a bound: ten million unsealed events (a bulk load, a stopped sealer) must not slow the panel
    backlog = AuditEvent.objects.filter(seal_seq__isnull=True).order_by()[: BACKLOG_COUNT_LIMIT + 1].count()
    return VerifyStatus(
        sealed_up_to=head_seq,
        head_hash=head_hash if head_seq else "",
        unsealed_backlog=min(backlog, BACKLOG_COUNT_LIMIT),
        last_run=VerificationRun.objects.order_by("-id").first(),
        unsealed_backlog_exact=backlog <= BACKLOG_COUNT_LIMIT,
    )


BACKLOG_COUNT_LIMIT = 100_000


def verify_digest(digest: dict, *, record: bool = True) -> VerifyResult:
    """Prove the history up to a signed digest was not rewritten: the signature holds, the chain verifies up to the
    digest's sequence number, and the recomputed hash there equals the digest's. Raises ``DigestError`` on a bad
    signature."""
    from audit.digests import check_signature

    check_signature(digest)
    seq = int(digest["seq"])
    if seq == 0:
        return VerifyResult(ok=True)
    result = verify(up_to=seq, remember=[seq], record=False)
    if result.ok and result.hashes_at.get(seq) != digest["hash"]:
        result.ok = False
        result.first_bad_seq = seq
        result.problem = (
            f"the recomputed hash at #{seq} differs from the digest's: history up to the digest was rewritten"
        )
    if record:
        VerificationRun.objects.create(
            finished_at=timezone.now(),
            ok=result.ok,
            checked=result.checked,
            head_seq=result.head_seq,
            head_hash=result.head_hash,
            first_bad_seq=result.first_bad_seq,
            problem=result.problem,
            digest_seq=seq,
        )
    return result
