"""Bulk-load a large synthetic history for measuring the portal (``manage.py bench portal``): finished cases spread
over ~60 days with their step runs and resolved escalations, open escalations with their waiting cases and escalated
step runs (several queues, reasons, amounts, SLA deadlines, some claimed), and audit events for every case.

Set-based: every table is filled by ``INSERT … SELECT`` over a generated series (``generate_series`` on PostgreSQL, a
recursive CTE on SQLite), so nothing goes through ORM objects or Python rows. The "random" values are integer hashes
of the row number, the same on both databases; a case's dependants recompute its hashes from its index instead of
joining it. Audit events are inserted (the append-only triggers allow INSERT) and left unsealed. Not audited as
business events: it is test data, written straight to the tables."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditAction, AuditEvent
from operations.models import (
    Case,
    CaseStatus,
    Escalation,
    EscalationStatus,
    Resolution,
    StepRun,
    StepRunStatus,
    WaitReason,
)
from operations.packs.claims.definition import HANDLERS, SIU

DAY = 86400
HISTORY_DAYS = 60
OPEN_DAYS = 7  # open escalations were raised over the last week
REASONS = ["max_amount", "min_confidence", "rule", "agent_error", "fraud_signals"]
PRIME = 2147483647  # 2^31 - 1
CHUNK = 250_000  # rows per statement: the loader prints its rate per chunk
BULK_MODE_FROM = 50_000  # cases: smaller loads keep every index and check (tests load inside their transaction)


def h(index_sql: str, salt: int, modulo: int) -> str:
    """A portable integer hash of a row number, in [0, modulo): the same value on PostgreSQL and SQLite. Squared modulo
    a prime so that different salts give independent values (an affine hash would correlate them); every product
    stays below 2^63 (the multiplier above 2^31 makes PostgreSQL compute in bigint)."""
    x = f"(((({index_sql}) + {salt * 1000003 + 17}) * 2654435761) %% {PRIME})"
    return f"(({x} * {x}) %% {PRIME} %% {modulo})"


def clamp(seconds_sql: str) -> str:
    """At least one second ago: generated ends never lie in the future."""
    return f"(CASE WHEN {seconds_sql} > 1 THEN {seconds_sql} ELSE 1 END)"


class Dialect:
    """The few SQL spellings PostgreSQL and SQLite do not share."""

    def __init__(self, vendor: str):
        self.pg = vendor == "postgresql"

    def series(self, first: int, last: int) -> tuple[str, str]:
        """(prefix before SELECT, FROM clause) yielding column ``i`` from first to last inclusive."""
        if self.pg:
            return "", f"generate_series({int(first)}, {int(last)}) AS s(i)"
        first, last = int(first), int(last)
        return f"WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last}) ", "s"  # noqa: S608  # nosec B608

    def ago(self, seconds_sql: str) -> str:
        """The timestamp ``seconds_sql`` seconds before the load's "now" (negative: after it)."""
        if self.pg:
            return f"(%(now)s::timestamptz - make_interval(secs => ({seconds_sql})))"
        return f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', julianday(%(now)s) - ({seconds_sql}) / 86400.0)"

    def json(self, text_sql: str) -> str:
        return f"({text_sql})::jsonb" if self.pg else f"({text_sql})"

    def text(self, sql: str) -> str:
        return f"CAST(({sql}) AS {'text' if self.pg else 'TEXT'})"


def _insert(model, exprs: dict[str, str], first: int, last: int, params: dict, *, source: str | None = None) -> int:
    """INSERT INTO model's table the rows of a series (or of ``source``, a FROM clause with column i); columns not in
    ``exprs`` get the field's default as a bound parameter. Returns the number of rows."""
    dialect = Dialect(connection.vendor)
    columns, values, bound = [], [], dict(params)
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.name in exprs or field.attname in exprs:
            values.append(exprs.get(field.name, exprs.get(field.attname)))
            continue
        default = field.get_default()
        if default is None and not field.null:
            raise ValueError(f"{model.__name__}.{field.name} needs a value")
        key = f"d_{field.column}"
        bound[key] = None if default is None else field.get_db_prep_save(default, connection)
        values.append(f"%({key})s")
    prefix, from_clause = dialect.series(first, last) if source is None else ("", source)
    # table and column names from model metadata, every value bound or generated here
    table = connection.ops.quote_name(model._meta.db_table)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) {prefix}SELECT {', '.join(values)} FROM {from_clause}"  # noqa: S608  # nosec B608
    with connection.cursor() as cursor:
        cursor.execute(sql, bound)  # nosec B608 -- table and column names from model metadata, values bound
        return cursor.rowcount


class PortalLoad:
    """One load: ``cases`` cases (``open_escalations`` of them waiting on an open escalation, the rest finished),
    ``events`` audit events spread over the cases, step runs and resolved escalations for the finished ones."""

    def __init__(self, *, cases: int, events: int, open_escalations: int, out: Callable[[str], None] = print):
        if open_escalations > cases:
            raise ValueError("--open-escalations cannot exceed --cases")
        self.cases, self.events, self.open = cases, events, open_escalations
        self.finished = cases - open_escalations
        self.out = out
        self.d = Dialect(connection.vendor)

    def run(self, *, workflow, steps: dict, users: list) -> dict:
        now = timezone.now()
        self.params = {"now": now if self.d.pg else now.replace(tzinfo=None).isoformat(sep=" ")}
        self.tag = f"B{int(now.timestamp())}"
        self.workflow, self.steps, self.users = workflow, steps, users
        t0 = time.perf_counter()
        with transaction.atomic():
            dropped = self._bulk_mode() if self.d.pg and self.cases >= BULK_MODE_FROM else []
            self._timed("cases", self.cases, self._cases)
            self._timed("step runs", None, self._step_runs)
            self._timed("escalations", None, self._escalations)
            self._timed("audit events", self.events, self._events)
            if dropped:
                self._timed(f"{len(dropped)} secondary indexes rebuilt", None, lambda: self._rebuild(dropped))
        if self.d.pg:
            self._timed("vacuum analyze", None, self._analyze)
        seconds = time.perf_counter() - t0
        self.out(f"loaded in {seconds:.1f} s")
        return {"seconds": seconds, "tag": self.tag}

    def _bulk_mode(self) -> list[str]:
        """PostgreSQL's bulk-load recipe, inside the load's transaction (a failure rolls all of it back): no
        synchronous commit, foreign-key triggers off when we may (the loader derives every reference from ids it
        checked), and the big tables' secondary indexes dropped now and built once at the end (a sorted build is far
        cheaper than ten million random index insertions). Primary keys and unique constraints stay."""
        tables = [m._meta.db_table for m in (Case, StepRun, Escalation, AuditEvent)]
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
            try:
                with transaction.atomic():
                    cursor.execute("SET LOCAL session_replication_role = replica")
            except Exception:  # not a superuser: keep the checks, it is only slower  # noqa: BLE001
                self.out("  (foreign-key checks stay on: session_replication_role needs a superuser)")
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes i WHERE tablename = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
                [tables],
            )
            indexes = cursor.fetchall()
            for name, _ in indexes:
                cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")
        return [definition for _, definition in indexes]

    def _rebuild(self, definitions: list[str]) -> int:
        with connection.cursor() as cursor:
            for definition in definitions:
                cursor.execute(definition)  # nosec B608 -- the definitions pg_indexes gave before the load
        return 0

    def _timed(self, what: str, total: int | None, fn) -> None:
        t0 = time.perf_counter()
        rows = fn()
        dt = time.perf_counter() - t0
        rate = f" ({rows / dt:,.0f} rows/s)" if rows and dt > 0 else ""
        self.out(f"  {what}: {rows or 0:,} rows in {dt:.1f} s{rate}")

    def _chunks(self, total: int, fn) -> int:
        done, t0 = 0, time.perf_counter()
        for first in range(0, total, CHUNK):
            last = min(total, first + CHUNK) - 1
            done += fn(first, last)
            if total > CHUNK:
                dt = time.perf_counter() - t0
                self.out(f"    {last + 1:,}/{total:,} ({done / dt:,.0f} rows/s)")
        return done

    # --- the case of index i: i < finished are history, the rest wait on an open escalation -----------------------

    def age(self, i: str) -> str:
        """Seconds between the case's submission and now."""
        history = h(i, 1, HISTORY_DAYS * DAY - 3600) + " + 3600"
        recent = h(i, 2, OPEN_DAYS * DAY - 60) + " + 60"
        return f"(CASE WHEN {i} < {self.finished} THEN {history} ELSE {recent} END)"

    def cycle(self, i: str) -> str:
        """Seconds from submission to the end: mostly within the hour, a fifth within three days."""
        return f"({h(i, 3, 3000)} + 60 + CASE WHEN {h(i, 4, 100)} < 20 THEN {h(i, 5, 3 * DAY)} ELSE 0 END)"

    def finished_status(self, i: str) -> str:
        return (
            f"(CASE WHEN {h(i, 6, 100)} < 85 THEN '{CaseStatus.COMPLETED}' "
            f"WHEN {h(i, 6, 100)} < 97 THEN '{CaseStatus.REJECTED}' ELSE '{CaseStatus.CANCELLED}' END)"
        )

    def amount(self, i: str) -> str:
        return f"({h(i, 7, 60000)} + 100)"

    def _cases(self) -> int:
        i, d = "i", self.d
        finished = f"i < {self.finished}"
        end_ago = clamp(f"{self.age(i)} - {self.cycle(i)}")
        approval = self.steps["approval"].pk
        exprs = {
            "workflow": str(self.workflow.pk),
            "reference": f"'{self.tag}-' || {d.text('i')}",
            "payload": d.json(f"""'{{"amount_claimed": "' || {d.text(self.amount(i))} || '", "documents": []}}'"""),
            "status": f"(CASE WHEN {finished} THEN {self.finished_status(i)} ELSE '{CaseStatus.WAITING}' END)",
            "wait_reason": f"(CASE WHEN {finished} THEN '' ELSE '{WaitReason.ESCALATION}' END)",
            "current_step": f"(CASE WHEN {finished} THEN NULL ELSE {approval} END)",
            "submitted_by": "'bench'",
            "created_at": d.ago(self.age(i)),
            "updated_at": d.ago(f"(CASE WHEN {finished} THEN {end_ago} ELSE {self.age(i)} - 30 END)"),
            "finished_at": f"(CASE WHEN {finished} THEN {d.ago(end_ago)} ELSE NULL END)",
        }
        rows = self._chunks(self.cases, lambda a, b: _insert(Case, exprs, a, b, self.params))
        # dependants address a case as first + index: the ids of one load must be consecutive
        first = Case.objects.filter(reference=f"{self.tag}-0").values_list("pk", flat=True).get()
        last = Case.objects.filter(reference=f"{self.tag}-{rows - 1}").values_list("pk", flat=True).get()
        if last - first + 1 != rows:
            raise RuntimeError("the loaded case ids are not consecutive (another writer?); load into a quiet database")
        self.first_case = first
        return rows

    def _step_runs(self) -> int:
        """Three runs per case: intake and documents succeeded, then coverage (finished) or approval escalated."""
        d, base = self.d, self.first_case
        total = 0
        for position, key in enumerate(["intake", "documents", None]):
            i = f"(c.id - {base})"
            if key is None:
                coverage, approval = self.steps["coverage"].pk, self.steps["approval"].pk
                step = f"(CASE WHEN {i} < {self.finished} THEN {coverage} ELSE {approval} END)"
                status = (
                    f"(CASE WHEN {i} < {self.finished} THEN '{StepRunStatus.SUCCEEDED}' "
                    f"ELSE '{StepRunStatus.ESCALATED}' END)"
                )
                agent = f"(CASE WHEN {i} < {self.finished} THEN 'claims.coverage' ELSE 'claims.approval' END)"
            else:
                step, status, agent = str(self.steps[key].pk), f"'{StepRunStatus.SUCCEEDED}'", f"'claims.{key}'"
            started = d.ago(f"{self.age(i)} - {5 * (position + 1)}")
            exprs = {
                "case": "c.id",
                "step": step,
                "attempt": "1",
                "status": status,
                "agent_key": agent,
                "agent_version": "'1'",
                "proposal": d.json(f"""'{{"outcome": "ok", "amount": "' || {d.text(self.amount(i))} || '"}}'"""),
                "started_at": started,
                "finished_at": started,
                "duration_ms": f"({h(i, 10 + position, 4000)} / 10.0 + 0.5)",
            }
            for first in range(0, self.cases, CHUNK):
                last = min(self.cases, first + CHUNK) - 1
                source = f"{Case._meta.db_table} c WHERE c.id BETWEEN {base + first} AND {base + last}"
                total += _insert(StepRun, exprs, 0, 0, self.params, source=source)
        return total

    def _escalations(self) -> int:
        """Open escalations on the waiting cases (on their escalated approval run), resolved ones on 15% of the
        finished cases."""
        d, base = self.d, self.first_case
        i = f"(r.case_id - {base})"
        approval = self.steps["approval"].pk
        resolved = f"{i} < {self.finished}"
        users = [u.pk for u in self.users]
        pick = h(i, 20, 10 * max(1, len(users)))  # a tenth of the open ones are claimed, spread over the users
        claimed = " ".join(f"WHEN {pick} = {n} THEN {pk}" for n, pk in enumerate(users))
        claimed_by = f"(CASE WHEN {resolved} THEN NULL {claimed} ELSE NULL END)" if users else "NULL"
        claimed_at = f"(CASE WHEN NOT ({resolved}) AND {pick} < {len(users)} THEN {d.ago('60')} END)"
        deadline_age = f"({self.age(i)} - 86400)"  # raised at submission, 24 h SLA
        resolved_age = clamp(f"{self.age(i)} - 60 - {h(i, 25, 100000)}")
        reason = "CASE " + " ".join(f"WHEN {h(i, 21, len(REASONS))} = {n} THEN '{r}'" for n, r in enumerate(REASONS))
        resolution = (
            f"(CASE WHEN {h(i, 22, 10)} < 6 THEN '{Resolution.APPROVE}' WHEN {h(i, 22, 10)} < 8 "
            f"THEN '{Resolution.AMEND}' ELSE '{Resolution.REJECT}' END)"
        )
        exprs = {
            "case": "r.case_id",
            "step_run": f"(CASE WHEN {resolved} THEN NULL ELSE r.id END)",
            "step": str(approval),
            "reason": reason + " END",
            "reasons": d.json(
                f"""'[{{"code": "max_amount", "message": "amount ' || {d.text(self.amount(i))} || """
                f"""' exceeds the agent limit 5,000.00 (policy v1)"}}]'"""
            ),
            "proposal": d.json(
                f"""'{{"outcome": "approve", "action": "approve", "amount": "' || {d.text(self.amount(i))} || '"}}'"""
            ),
            "amount": self.amount(i),
            "queue": f"(CASE WHEN {h(i, 23, 10)} < 8 THEN '{HANDLERS}' ELSE '{SIU}' END)",
            "priority": f"(CASE WHEN {h(i, 24, 5)} = 0 THEN 1 WHEN {h(i, 24, 5)} = 4 THEN 3 ELSE 2 END)",
            "status": f"(CASE WHEN {resolved} THEN '{EscalationStatus.RESOLVED}' ELSE '{EscalationStatus.OPEN}' END)",
            "sla_deadline": d.ago(deadline_age),
            "claimed_by": claimed_by,
            "claimed_at": claimed_at,
            "sla_breached_at": f"(CASE WHEN {deadline_age} > 0 AND (NOT ({resolved}) OR {resolved_age} < "
            f"{deadline_age}) THEN {d.ago(deadline_age)} END)",
            "resolution": f"(CASE WHEN {resolved} THEN {resolution} ELSE '' END)",
            "reason_code": f"(CASE WHEN {resolved} THEN 'other' ELSE '' END)",
            "resolution_note": f"(CASE WHEN {resolved} THEN 'bench' ELSE '' END)",
            "resolved_by": f"(CASE WHEN {resolved} THEN 'bench' ELSE '' END)",
            "resolved_at": f"(CASE WHEN {resolved} THEN {d.ago(resolved_age)} END)",
            "created_at": d.ago(f"{self.age(i)} - 15"),
        }
        condition = (
            f"(r.status = '{StepRunStatus.ESCALATED}' OR ({i} < {self.finished} AND {h(i, 26, 100)} < 15 "
            f"AND r.step_id = {self.steps['documents'].pk}))"
        )
        total = 0
        for first in range(0, self.cases, CHUNK):
            last = min(self.cases, first + CHUNK) - 1
            source = (
                f"{StepRun._meta.db_table} r WHERE r.case_id BETWEEN {base + first} AND {base + last} AND {condition}"
            )
            total += _insert(Escalation, exprs, 0, 0, self.params, source=source)
        return total

    def _events(self) -> int:
        """``events`` audit events, ``events / cases`` per case (the k-th event of every case, then the next k)."""
        if not self.events:
            return 0
        d, n = self.d, self.cases
        ci, k = f"(i %% {n})", f"(i / {n})"
        per_case = max(1, -(-self.events // n))
        last_k = per_case - 1
        action = (
            f"(CASE WHEN {k} = 0 THEN '{AuditAction.CASE_SUBMITTED}' WHEN {k} < {last_k} THEN "
            f"'{AuditAction.STEP_DECIDED}' WHEN {ci} < {self.finished} THEN '{AuditAction.CASE_COMPLETED}' "
            f"ELSE '{AuditAction.ESCALATION_OPENED}' END)"
        )
        case_id = f"({self.first_case} + {ci})"
        exprs = {
            "occurred_at": d.ago(f"{self.age(ci)} - {k} * 7"),
            "actor_type": "'system'",
            "actor_id": "'bench'",
            "actor_label": "'bench portal load'",
            "action": action,
            "subject_type": "'operations.case'",
            "subject_id": d.text(case_id),
            "case_id": case_id,
            "data": d.json(f"""'{{"event": ' || {d.text(k)} || '}}'"""),
        }
        return self._chunks(self.events, lambda a, b: _insert(AuditEvent, exprs, a, b, self.params))

    def _analyze(self) -> int:
        """Statistics for the planner and, outside a transaction, the visibility map that lets the open-row counts
        (queue depths, workflow map) be index-only scans, as autovacuum leaves a table in steady state."""
        command = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
        with connection.cursor() as cursor:
            for model in (Case, StepRun, Escalation, AuditEvent):
                cursor.execute(f"{command} {connection.ops.quote_name(model._meta.db_table)}")  # nosec B608
        return 0
