"""Does a page's SQL use indexes? EXPLAIN every SELECT a page ran (captured with CaptureQueriesContext) on
PostgreSQL and report the sequential scans of the big tables."""

from __future__ import annotations

import json

from django.db import connection, transaction

from audit.models import AuditEvent
from operations.models import Case, Escalation, StepRun

BIG_TABLES = {m._meta.db_table for m in (Case, Escalation, StepRun, AuditEvent)}


def seq_scans(plan: dict) -> list[str]:
    """The big tables a plan (EXPLAIN FORMAT JSON) reads with a sequential scan, each once."""
    found: list[str] = []

    def walk(node: dict) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in BIG_TABLES:
            found.append(node["Relation Name"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan["Plan"])
    return sorted(set(found))


def explain(sql: str, params=None, *, strict: bool = False) -> dict:
    """The plan of one SELECT. ``strict``: ask whether an index *could* serve it (``enable_seqscan = off``): on a
    small table the planner rightly prefers a sequential scan, and a Seq Scan that remains under this setting means
    no index fits the query."""
    with transaction.atomic(), connection.cursor() as cursor:
        if strict:
            cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)  # nosec B608 -- SQL the page itself just ran
        raw = cursor.fetchone()[0]
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]


def check_queries(queries: list[dict], *, strict: bool = False) -> list[dict]:
    """For each captured SELECT (``CaptureQueriesContext.captured_queries``) that touches a big table: the tables it
    scans sequentially. Returns only the offending queries: ``[{"sql", "tables"}]``."""
    offending = []
    for query in queries:
        sql = query["sql"].strip()
        if not sql.upper().startswith("SELECT"):
            continue
        if not any(table in sql for table in BIG_TABLES):
            continue
        tables = seq_scans(explain(sql, strict=strict))
        if tables:
            offending.append({"sql": sql, "tables": tables})
    return offending
