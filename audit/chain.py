"""The hash chain's definition: which fields of an event are chained, their canonical JSON, and the link function.

The canonical JSON of an event (version 1) is the JSON object of the fields in ``CHAINED_FIELDS`` with

- keys sorted (at every level, also inside ``data``), no whitespace (separators ``,`` and ``:``), UTF-8, non-ASCII
  characters written as they are (not ``\\u`` escaped);
- ``occurred_at`` as a UTC ISO-8601 string with microseconds and a ``Z``: ``2026-11-25T20:01:02.000300Z``;
- ``data`` as stored (the writer stores Decimals as strings, so they appear as strings), numbers as Python's ``json``
  writes them; ``case_id`` an integer or ``null``; every other field a string; ``seal_seq`` and ``id`` integers.

That is exactly ``json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. It is computed with
orjson, which writes the same bytes for everything the writer stores (orjson and ``json`` differ only for floats
outside 1e-4 <= |x| < 1e16 and integers beyond 64 bits, which ``audit.services.redact`` stores as strings), because
verifying a million events must take seconds, not a minute.

Each sealed event's ``hash = sha256(prev_hash || canonical_json(event))`` as lowercase hex, where ``prev_hash`` is the
64-character hex hash of the event with ``seal_seq - 1`` (its ASCII bytes) and, for ``seal_seq`` 1, ``GENESIS`` (64
zeros). Anyone holding an export can recompute it with a few lines of any language.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal

import orjson

GENESIS = "0" * 64
CANONICAL_VERSION = 1
CHAINED_FIELDS = (
    "seal_seq",
    "id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "subject_type",
    "subject_id",
    "subject_label",
    "case_id",
    "data",
    "correlation_id",
)
# The columns the sealer and verifier read, in this order (CHAINED_FIELDS, then the stored hash).
SELECT_COLUMNS = ", ".join(CHAINED_FIELDS) + ", hash"
# UTC wall time: JSON writes it "YYYY-MM-DDTHH:MM:SS[.f]" (cheaper than to_char); utc_iso pads it on the client.
_PG_EXPRESSIONS = {"occurred_at": "occurred_at AT TIME ZONE 'UTC'"}
# On PostgreSQL the database builds each event as one JSON text (in C, on the server's core), so the client parses one
# value per row instead of converting fourteen columns: verifying is bound by the client's work.
PG_SELECT_COLUMNS = (
    "seal_seq, json_build_object("
    + ", ".join(f"'{f}', {_PG_EXPRESSIONS.get(f, f)}" for f in CHAINED_FIELDS)
    + ")::text, hash"
)


def select_columns(vendor: str) -> str:
    """The columns to select for ``to_event``."""
    return PG_SELECT_COLUMNS if vendor == "postgresql" else SELECT_COLUMNS


def to_event(row, vendor: str) -> tuple[int | None, dict, str]:
    """(seal_seq, canonical event dict, stored hash) of a row selected with ``select_columns(vendor)``."""
    if vendor == "postgresql":
        event = orjson.loads(row[1])
        event["occurred_at"] = utc_iso(event["occurred_at"])
        return row[0], event, row[2]
    return row[0], row_to_event(row), row[13]


# --- the fast path: the canonical bytes without building an event dict -------------------------------------------
# Sealing and verifying a million events is bound by the work per row. On PostgreSQL the server writes the canonical
# JSON of every field but ``data`` (PostgreSQL escapes a string for JSON exactly as ``json.dumps(ensure_ascii=False)``
# does: ``\"``, ``\\``, ``\b \f \n \r \t``, other control characters as lowercase ``\u00xx``, everything else as it
# is), in the canonical key order, as two texts around ``data``; the client only re-serialises ``data`` with sorted
# keys and inserts ``seal_seq``. ``test_the_fast_path_writes_the_canonical_bytes`` holds it to ``canonical_json``.
_SORTED_FIELDS = sorted(CHAINED_FIELDS)
_HEAD_FIELDS = _SORTED_FIELDS[: _SORTED_FIELDS.index("data")]
_TAIL_FIELDS = _SORTED_FIELDS[_SORTED_FIELDS.index("data") + 1 :]
assert _TAIL_FIELDS[:3] == ["id", "occurred_at", "seal_seq"]  # noqa: S101  (the client writes seal_seq between)


def _pg_json(field: str) -> str:
    if field in ("id", "case_id"):
        return f"coalesce({field}::text, 'null')"
    if field == "occurred_at":
        return "'\"' || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '\"'"
    return f"to_json({field})::text"


def _pg_concat(fields, *, first: bool) -> str:
    parts = []
    for i, f in enumerate(fields):
        parts.append(f"'{'{' if first and i == 0 else ','}\"{f}\":'")
        parts.append(_pg_json(f))
    return " || ".join(parts)


# id, seal_seq, text before data ('{"action":...,"data":'), data, text between data and seal_seq (',"id":...,
# "occurred_at":"..."'), text after seal_seq (',"subject_id":...}'), stored hash.
PG_FAST_COLUMNS = (
    "id, seal_seq, "
    + _pg_concat(_HEAD_FIELDS, first=True)
    + " || ',\"data\":', data::text, "
    + _pg_concat(_TAIL_FIELDS[:2], first=False)
    + ", "
    + _pg_concat(_TAIL_FIELDS[3:], first=False)
    + " || '}', hash"
)
FAST_COLUMNS = "id, " + SELECT_COLUMNS


def fast_columns(vendor: str) -> str:
    """The columns to select for ``fast_link``: (id, seal_seq, ..., stored hash)."""
    return PG_FAST_COLUMNS if vendor == "postgresql" else FAST_COLUMNS


def fast_link(prev_hash: str, row, seq: int, vendor: str) -> str:
    """``link(prev_hash, canonical_json(event))`` for a row selected with ``fast_columns(vendor)``, chained as event
    number ``seq``: the same hash, computed without an event dict on PostgreSQL."""
    if vendor != "postgresql":
        event = row_to_event(row[1:])
        event["seal_seq"] = seq
        return link(prev_hash, canonical_json(event))
    return _pg_link(prev_hash, row, seq)


def _pg_link(prev_hash: str, row, seq: int, _loads=orjson.loads, _dumps=orjson.dumps, _sha256=hashlib.sha256) -> str:
    try:
        data = _dumps(_loads(row[3]), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        data = canonical_json_reference(json.loads(row[3]))
    return _sha256(
        b"".join(((prev_hash + row[2]).encode(), data, f'{row[4]},"seal_seq":{seq}{row[5]}'.encode()))
    ).hexdigest()


def row_linker(vendor: str):
    """``(prev_hash, row) -> hash`` for sealed rows selected with ``fast_columns(vendor)`` (their own seal_seq)."""
    if vendor == "postgresql":
        return lambda prev_hash, row: _pg_link(prev_hash, row, row[1])
    return lambda prev_hash, row: fast_link(prev_hash, row, row[1], vendor)


_UTC = dt.UTC


def _default(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return utc_iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def utc_iso(value: dt.datetime | str) -> str:
    """A time as canonical UTC ISO-8601 with microseconds and ``Z`` (naive times are taken as UTC)."""
    if isinstance(value, str):
        if len(value) == 27 and value[-1] == "Z" and value[10] == "T":
            return value  # already canonical
        tail = value[19:]
        if len(value) >= 19 and value[10] in " T" and value[4] == "-" and not any(c in tail for c in "+-Z"):
            # "YYYY-MM-DD[ T]HH:MM:SS[.f...]" in UTC, as PostgreSQL writes a timestamp (trailing zeros trimmed)
            base, _, fraction = value.partition(".")
            return f"{base[:10]}T{base[11:19]}.{fraction.ljust(6, '0')}Z"
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(_UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


_reference_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
).encode
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def canonical_json_reference(event: dict) -> bytes:
    """The definition, in the standard library: slower, and the yardstick for ``canonical_json``."""
    return _reference_dumps(event).encode("utf-8")


def canonical_json(event: dict) -> bytes:
    """The canonical bytes of an event given as a dict of ``CHAINED_FIELDS`` (see the module docstring)."""
    try:
        return orjson.dumps(event, option=_ORJSON_OPTIONS, default=_default)
    except (orjson.JSONEncodeError, TypeError):
        return canonical_json_reference(event)


def link(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def row_to_event(row) -> dict:
    """A database row (``SELECT_COLUMNS`` order) as the canonical event dict; ``data`` may come as text or parsed."""
    data = row[11]
    if isinstance(data, str | bytes):
        data = orjson.loads(data)
    return {
        "seal_seq": row[0],
        "id": row[1],
        "occurred_at": utc_iso(row[2]),
        "actor_type": row[3],
        "actor_id": row[4],
        "actor_label": row[5],
        "action": row[6],
        "subject_type": row[7],
        "subject_id": row[8],
        "subject_label": row[9],
        "case_id": row[10],
        "data": data,
        "correlation_id": row[12],
    }
