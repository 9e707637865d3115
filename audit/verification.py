"""The verifier: recomputes the hash chain from the first sealed event and names the first sequence number that breaks.

A break is a hash that does not match its recomputation (an edited event, or any event after an inserted or removed
one) or a gap in the sequence (a removed event). A recomputed chain that was rewritten throughout still verifies on
its own; a signed digest published earlier catches that (``audit.digests``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import connection, connections, transaction
from django.utils import timezone

from audit.chain import GENESIS, canonical_json, fast_columns, link, row_linker
from audit.models import AuditEvent, VerificationRun
from audit.sealing import chain_head
from audit.triggers import TABLE

CHUNK = 20_000
# Below this many events one process is quicker than starting several.
PARALLEL_MIN_EVENTS = 100_000
RANGES_PER_WORKER = 2


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
    ``start_seq`` (an archive file's events; the database goes through ``verify``)."""
    return _check(
        rows,
        link_row=lambda prev, row: link(prev, canonical_json(row[1])),
        seq_at=0,
        start_seq=start_seq,
        prev_hash=prev_hash,
        remember=remember,
    )


def _check(
    rows: Iterable, *, link_row, seq_at: int, start_seq: int, prev_hash: str, remember: Iterable[int] = ()
) -> VerifyResult:
    """The chain check over rows in seal_seq order: ``row[seq_at]`` is the sequence number, ``row[-1]`` the stored
    hash, ``link_row(prev_hash, row)`` the recomputed one. (The loop of a million: kept to the bare minimum.)"""
    remember = set(remember)
    result = VerifyResult(ok=True)
    expected = start_seq
    prev = prev_hash
    for row in rows:
        seq = row[seq_at]
        if seq != expected:
            result.ok = False
            result.first_bad_seq = expected
            result.problem = f"expected event #{expected}, found #{seq}: missing or renumbered events"
            break
        recomputed = link_row(prev, row)
        if recomputed != row[-1]:
            result.ok = False
            result.first_bad_seq = seq
            result.problem = "stored hash does not match the recomputed hash: the event or its predecessors changed"
            break
        if remember and seq in remember:
            result.hashes_at[seq] = recomputed
        prev = recomputed
        expected += 1
    checked = expected - start_seq
    result.checked = checked
    result.head_seq = expected - 1 if checked else None
    result.head_hash = prev if checked else ""
    return result


def _stream(first: int, last: int | None):
    """The rows of seal_seq ``first``..``last`` (None: to the end) as ``fast_columns``, in seal_seq order.

    A server-side cursor on PostgreSQL: a million rows stream in chunks instead of landing in memory at once. A helper
    thread fetches the next chunk while this one is hashed, so the database's work and ours overlap; it touches only
    the driver's cursor, and only it does."""
    where = "seal_seq >= %s" + (" AND seal_seq <= %s" if last is not None else "")
    params = [first] + ([last] if last is not None else [])
    vendor = connection.vendor
    with connection.chunked_cursor() as cursor:
        cursor.execute(f"SELECT {fast_columns(vendor)} FROM {TABLE} WHERE {where} ORDER BY seal_seq", params)  # noqa: S608  # nosec B608
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
                yield from chunk
        finally:
            stop.set()
            while fetcher.is_alive():  # unblock a fetcher waiting on a full queue, then let it finish
                with contextlib.suppress(queue.Empty):
                    chunks.get(timeout=0.1)
            fetcher.join()


def _stored_hash(seq: int) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT hash FROM {TABLE} WHERE seal_seq = %s", [seq])  # noqa: S608  # nosec B608
        row = cursor.fetchone()
    return row[0] if row else None


def verify_range(first: int, last: int | None, prev_hash: str | None, remember: Iterable[int] = ()) -> VerifyResult:
    """Recompute events ``first``..``last`` (None: to the end of the chain), chained from ``prev_hash`` or, when it is
    None, from the stored hash of event ``first - 1`` (checked in its own range). A range that ends early names the
    first missing event."""
    if prev_hash is None:
        prev_hash = _stored_hash(first - 1)
        if prev_hash is None:
            return VerifyResult(
                ok=False,
                first_bad_seq=first - 1,
                problem=f"event #{first - 1} is missing: missing or renumbered events",
            )
    vendor = connection.vendor
    result = _check(
        _stream(first, last),
        link_row=row_linker(vendor),
        seq_at=1,
        start_seq=first,
        prev_hash=prev_hash,
        remember=remember,
    )
    if result.ok and last is not None and result.head_seq != last:
        result.ok = False
        result.first_bad_seq = (result.head_seq or first - 1) + 1
        result.problem = f"expected event #{result.first_bad_seq}, found none: missing events"
    return result


def _verify_range_in_worker(args) -> VerifyResult:
    try:
        with transaction.atomic():
            return verify_range(*args)
    finally:
        connection.close()


def _plan(first: int, head: int | None, up_to: int | None, workers: int) -> list[tuple[int, int | None]]:
    """Split ``first``..the head into ranges for ``workers`` processes (a few per process, so that a slow one does not
    hold up the end); the last range runs to the end of the chain unless ``up_to`` bounds it."""
    end = up_to if up_to is not None else head
    if end is None or workers <= 1 or end - first + 1 < PARALLEL_MIN_EVENTS:
        return [(first, up_to)]
    count = workers * RANGES_PER_WORKER
    size = -(-(end - first + 1) // count)
    ranges = [(a, min(a + size - 1, end)) for a in range(first, end + 1, size)]
    if up_to is None:
        ranges[-1] = (ranges[-1][0], None)
    return ranges


def _can_fork() -> bool:
    """Processes need their own connections (the data they check must be committed, outside any transaction of
    ours) and a process allowed to have children (django-q2 workers are daemons)."""
    return (
        not connection.in_atomic_block
        and not multiprocessing.current_process().daemon
        and "fork" in multiprocessing.get_all_start_methods()
        and (
            connection.vendor == "postgresql"
            or (
                connection.vendor == "sqlite"
                and not connection.creation.is_in_memory_db(connection.settings_dict["NAME"])
            )
        )
    )


def default_workers() -> int:
    """One process per core this process may use (at most 8)."""
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _combine(results: list[VerifyResult], first: int) -> VerifyResult:
    """The ranges' results, in order, as one: the first break in the lowest range is the chain's first break (every
    range before it recomputed its last stored hash, which the next range started from)."""
    combined = VerifyResult(ok=True)
    for result in results:
        combined.checked += result.checked
        combined.hashes_at.update(result.hashes_at)
        if result.checked:
            combined.head_seq, combined.head_hash = result.head_seq, result.head_hash
        if not result.ok:
            combined.ok, combined.first_bad_seq, combined.problem = False, result.first_bad_seq, result.problem
            combined.checked = combined.first_bad_seq - first
            break
    return combined


def _verify_chain(*, first, prev_hash, up_to, remember, workers) -> VerifyResult:
    head, _ = chain_head()
    parallel = workers > 1 and _can_fork()
    ranges = _plan(first, head, up_to, workers if parallel else 1)
    jobs = [(a, b, prev_hash if a == first else None, remember) for a, b in ranges]
    if len(jobs) == 1:
        with transaction.atomic():
            return verify_range(*jobs[0])
    connections.close_all()  # the children open their own; sharing a socket across fork corrupts it
    with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        results = pool.map(_verify_range_in_worker, jobs, chunksize=1)
    return _combine(results, first)


def verify(
    *,
    up_to: int | None = None,
    from_seq: int = 1,
    prev_hash: str = GENESIS,
    remember: Iterable[int] = (),
    record: bool = True,
    workers: int | None = None,
) -> VerifyResult:
    """Recompute the chain (from ``from_seq``, whose predecessor's hash is ``prev_hash``: for a database whose older
    events were archived; up to ``up_to``) and record the run. Large chains are checked in ranges by ``workers``
    processes (default: one per core) when this is called outside a transaction; the result is the same."""
    started, t0 = timezone.now(), time.perf_counter()
    result = _verify_chain(
        first=from_seq,
        prev_hash=prev_hash,
        up_to=up_to,
        remember=remember,
        workers=default_workers() if workers is None else workers,
    )
    if result.ok and up_to is not None and result.head_seq != up_to:
        result.ok = False
        result.first_bad_seq = (result.head_seq or from_seq - 1) + 1
        result.problem = f"the chain ends at #{result.head_seq}, before #{up_to}"
    if record:
        _record(result, started_at=started, duration_ms=(time.perf_counter() - t0) * 1000)
    return result


def _record(result: VerifyResult, **extra) -> VerificationRun:
    """The run's outcome, for the status panel and the API (``extra``: its start and duration, or the digest)."""
    return VerificationRun.objects.create(
        finished_at=timezone.now(),
        ok=result.ok,
        checked=result.checked,
        head_seq=result.head_seq,
        head_hash=result.head_hash,
        first_bad_seq=result.first_bad_seq,
        problem=result.problem,
        **extra,
    )


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


BACKLOG_COUNT_LIMIT = 100_000  # the status panel counts the unsealed backlog up to this, then says "N+"


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


def verify_digest(
    digest: dict,
    *,
    from_seq: int = 1,
    prev_hash: str = GENESIS,
    record: bool = True,
    workers: int | None = None,
) -> VerifyResult:
    """Prove the history up to a signed digest was not rewritten: the signature holds, the chain verifies up to the
    digest's sequence number, and the recomputed hash there equals the digest's. On a database whose events before
    ``from_seq`` were archived, the chain starts from ``prev_hash`` (the archive's last hash). Raises ``DigestError``
    on a bad signature or a digest older than the events kept."""
    from audit.digests import DigestError, check_signature

    check_signature(digest)
    seq = int(digest["seq"])
    if seq == 0:
        return VerifyResult(ok=True)
    if seq < from_seq - 1:
        raise DigestError(
            f"the digest (#{seq}) is older than the events kept in the database (from #{from_seq}): "
            f"check it against the archive holding #{seq}"
        )
    if seq == from_seq - 1:  # the digest pins the archive's last event, which the database's chain starts from
        result = VerifyResult(ok=True, head_seq=seq, head_hash=prev_hash, hashes_at={seq: prev_hash})
    else:
        result = verify(
            up_to=seq, from_seq=from_seq, prev_hash=prev_hash, remember=[seq], record=False, workers=workers
        )
    if result.ok and result.hashes_at.get(seq) != digest["hash"]:
        result.ok = False
        result.first_bad_seq = seq
        result.problem = (
            f"the recomputed hash at #{seq} differs from the digest's: history up to the digest was rewritten"
        )
    if record:
        _record(result, digest_seq=seq)
    return result
