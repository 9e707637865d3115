"""The sealer: chains unsealed events into the hash chain, in id order, one batch per transaction.

Writers never touch the chain head: they insert with ``seal_seq`` NULL. The sealer, alone at a time (a PostgreSQL
advisory lock; on SQLite the IMMEDIATE transaction already holds the database's single write lock), reads the head,
takes the next unsealed events by id, numbers them consecutively and fills ``seal_seq`` and ``hash`` — the one change
the append-only triggers allow. An event whose transaction commits late (a lower id, committed after higher ids were
sealed) is simply still unsealed at the next run and gets the next numbers: never skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db import connection, transaction

from audit.chain import GENESIS, fast_columns, fast_link
from audit.triggers import TABLE

# pg_advisory_xact_lock key: "selfops audit sealer"
SEALER_LOCK_KEY = 0x5E1F_0A5D_17
DEFAULT_BATCH_SIZE = 5000


@dataclass(frozen=True)
class SealResult:
    sealed: int
    head_seq: int | None
    head_hash: str


def chain_head(cursor=None) -> tuple[int | None, str]:
    """The last sealed (seq, hash), or (None, GENESIS) for an empty chain."""

    def read(c):
        c.execute(f"SELECT seal_seq, hash FROM {TABLE} WHERE seal_seq IS NOT NULL ORDER BY seal_seq DESC LIMIT 1")  # noqa: S608  # nosec B608
        row = c.fetchone()
        return (row[0], row[1]) if row else (None, GENESIS)

    if cursor is not None:
        return read(cursor)
    with connection.cursor() as c:
        return read(c)


def _lock(cursor, *, wait: bool = True) -> bool:
    """Take the sealer's lock for this transaction; with ``wait=False`` only if nobody holds it (returns whether)."""
    if connection.vendor == "postgresql":
        if not wait:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEALER_LOCK_KEY])
            return bool(cursor.fetchone()[0])
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEALER_LOCK_KEY])
    # SQLite: the transaction began IMMEDIATE (settings), so it already holds the only write lock.
    return True


def _write(cursor, ids: list[int], seqs: list[int], hashes: list[str]) -> None:
    if connection.vendor == "postgresql":
        cursor.execute(
            f"UPDATE {TABLE} AS e SET seal_seq = v.seq, hash = v.hash "  # noqa: S608  # nosec B608
            "FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(id, seq, hash) "
            # the id range lets the planner walk the unsealed index instead of the whole table
            "WHERE e.id = v.id AND e.seal_seq IS NULL AND e.id BETWEEN %s AND %s",
            [ids, seqs, hashes, min(ids), max(ids)],
        )
    else:
        cursor.executemany(
            f"UPDATE {TABLE} SET seal_seq = %s, hash = %s WHERE id = %s",  # noqa: S608  # nosec B608
            list(zip(seqs, hashes, ids, strict=True)),
        )


def seal_batch(batch_size: int = DEFAULT_BATCH_SIZE, *, wait: bool = True) -> int:
    """Seal up to ``batch_size`` events in one transaction; returns how many were sealed (0 as well when ``wait`` is
    False and another sealer holds the lock)."""
    with transaction.atomic(), connection.cursor() as cursor:
        if not _lock(cursor, wait=wait):
            return 0
        head_seq, prev = chain_head(cursor)
        vendor = connection.vendor
        cursor.execute(
            f"SELECT {fast_columns(vendor)} FROM {TABLE} WHERE seal_seq IS NULL ORDER BY id LIMIT %s",  # noqa: S608  # nosec B608
            [batch_size],
        )
        rows = cursor.fetchall()
        if not rows:
            return 0
        seq = head_seq or 0
        ids, seqs, hashes = [], [], []
        for row in rows:
            seq += 1
            prev = fast_link(prev, row, seq, vendor)
            ids.append(row[0])
            seqs.append(seq)
            hashes.append(prev)
        _write(cursor, ids, seqs, hashes)
        return len(rows)


def seal(*, batch_size: int = DEFAULT_BATCH_SIZE, max_batches: int | None = None, wait: bool = True) -> SealResult:
    """Seal every event unsealed now (or ``max_batches`` batches of them). Safe to run in several processes at once:
    sealers take turns, batch by batch; with ``wait=False`` it gives way at once to a sealer already at work."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    sealed = batches = 0
    while max_batches is None or batches < max_batches:
        n = seal_batch(batch_size, wait=wait)
        sealed += n
        batches += 1
        if n < batch_size:
            break
    head_seq, head_hash = chain_head()
    return SealResult(sealed=sealed, head_seq=head_seq, head_hash=head_hash)


_last_seal_started = 0.0  # per process: when this process last started sealing (time.monotonic)


def seal_if_due(interval: float) -> int:
    """Seal the backlog if this process has not started a seal for ``interval`` seconds and no other sealer is at
    work; returns how many events were sealed. Workers call it after each task, so while work flows the chain is
    sealed every few seconds without a process of its own (django-q2's schedules are a minute at the finest); the
    minute schedule seals whatever is left when no work flows."""
    global _last_seal_started
    now = time.monotonic()
    if now - _last_seal_started < interval:
        return 0
    _last_seal_started = now
    return seal(wait=False).sealed
