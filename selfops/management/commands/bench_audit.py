"""Benchmark of the audit trail, all figures from one run, in a throwaway database (never the real trail: events
cannot be deleted, so a benchmark must not write into it).

It lives in the project package, not in ``audit``, because it drives the claims workflow: audit imports nothing of
operations.

1. insert N realistic events set-based (one INSERT ... SELECT);
2. seal them (events/s);
3. verify the chain (events/s), as ``audit_verify`` does (processes over ranges) and in one process;
4. run the claims workflow in-process for M cases with audit writes, and again with them disabled (within this
   benchmark only), and report the time per case step and the overhead auditing adds.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from audit.triggers import TABLE

PG_INSERT = """
INSERT INTO audit_auditevent (occurred_at, actor_type, actor_id, actor_label, action, subject_type, subject_id,
                              subject_label,
                     case_id, data, correlation_id, hash)
SELECT now() - make_interval(secs => %(n)s - g), 'agent', 'claims.assessment@1.0', 'claims.assessment', 'step.decided',
       'operations.steprun', g::text, 'step run ' || g, g / 7,
       jsonb_build_object(
           'step', 'assessment', 'attempt', 1,
           'proposal', jsonb_build_object('outcome', 'assessed', 'action', 'approve',
                                          'amount', (g %% 9000 + 100) || '.50', 'confidence', 0.87,
                                          'rationale', 'estimate from claimed amount and peril',
                                          'data', jsonb_build_object('approved_amount', (g %% 9000) || '.00')),
           'verdict', jsonb_build_object('decision', 'allow', 'policy_version', 3, 'reasons', '[]'::jsonb)),
       'advance-' || (g / 7) || '-bench', ''
FROM generate_series(1, %(n)s) AS g
"""
SQLITE_INSERT = """
WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < %(n)s)
INSERT INTO audit_auditevent (occurred_at, actor_type, actor_id, actor_label, action, subject_type, subject_id,
                              subject_label,
                     case_id, data, correlation_id, hash)
SELECT strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || (%(n)s - x) || ' seconds'), 'agent', 'claims.assessment@1.0',
       'claims.assessment', 'step.decided', 'operations.steprun', CAST(x AS TEXT), 'step run ' || x, x / 7,
       json_object(
           'step', 'assessment', 'attempt', 1,
           'proposal', json_object('outcome', 'assessed', 'action', 'approve', 'amount', (x %% 9000 + 100) || '.50',
                                   'confidence', 0.87, 'rationale', 'estimate from claimed amount and peril',
                                   'data', json_object('approved_amount', (x %% 9000) || '.00')),
           'verdict', json_object('decision', 'allow', 'policy_version', 3, 'reasons', json('[]'))),
       'advance-' || (x / 7) || '-bench', ''
FROM g
"""


# The engine's peak on this kind of machine (2 cores, PostgreSQL alongside, 2 workers, ORM broker): about 300 tasks/s
# as 7-step chains (ECOSYSTEM.md, "django-q2 facts"), one step per task.
ENGINE_PEAK_STEPS_PER_S = 300


@contextlib.contextmanager
def _patched_audit_writes(make):
    """Within the benchmark only: replace audit_record / audit_record_many wherever they were imported."""
    from audit import services

    originals = {"audit_record_many": services.audit_record_many, "audit_record": services.audit_record}
    patched = []
    for module in list(sys.modules.values()):
        for name, original in originals.items():
            if getattr(module, name, None) is original:
                setattr(module, name, make(original))
                patched.append((module, name, original))
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def audit_writes_disabled():
    return _patched_audit_writes(lambda original: lambda *args, **kwargs: None)


def _stat(pid: int) -> list[int]:
    """/proc/PID/stat's fields after the command name, as numbers (index 1 is the parent, 11..14 utime, stime, cutime,
    cstime in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        return [int(x) if x.lstrip("-").isdigit() else 0 for x in f.read().rsplit(")", 1)[1].split()]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class WriteTimer:
    """Adds up the time spent inside the audit writes (a direct measure, less noisy than a difference of runs)."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, original):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


class Command(BaseCommand):
    help = "Benchmark sealing, verification and the per-step cost of auditing, in a throwaway database."

    def add_arguments(self, parser):
        parser.add_argument("--events", type=int, default=1_000_000)
        parser.add_argument("--batch-size", type=int, default=5000, help="sealer batch size")
        parser.add_argument("--cases", type=int, default=100, help="claims per round of the overhead measurement")
        parser.add_argument("--rounds", type=int, default=3, help="rounds with and without audit, interleaved")

    def handle(self, *args, events, batch_size, cases, rounds, **options):
        if events < 1 or cases < 1 or rounds < 1:
            raise CommandError("--events, --cases and --rounds must be at least 1")
        old_name = connection.settings_dict["NAME"]
        self.stdout.write(f"creating a throwaway database ({connection.vendor}) ...")
        if connection.vendor == "postgresql":  # a name of its own: a test run on the same server uses test_<name>
            connection.settings_dict.setdefault("TEST", {})["NAME"] = f"bench_audit_{os.getpid()}"
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        try:
            self._run(events, batch_size, cases, rounds)
        finally:
            connection.creation.destroy_test_db(old_name, verbosity=0)

    @staticmethod
    def _cpu() -> tuple[float, float]:
        """CPU seconds used so far by this process and by the database server (PostgreSQL on this machine: the
        postmaster, its live backends and the backends that ended; the machine may be shared, so wall time alone says
        little)."""
        server = 0.0
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid = cursor.fetchone()[0]
            try:
                postmaster = int(_stat(pid)[1])
                server = sum(_stat(postmaster)[11:15]) + sum(
                    sum(fields[11:13]) for fields in map(_stat, _children(postmaster))
                )
                server /= os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError):
                server = float("nan")
        return time.process_time(), server

    def _timed(self, label: str, n: int, fn):
        cpu0, kids0, t0 = self._cpu(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        result = fn()
        wall, cpu1, kids1 = time.perf_counter() - t0, self._cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
        here = cpu1[0] - cpu0[0] + (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime)
        server = cpu1[1] - cpu0[1]
        self._say(
            label,
            f"{wall:8.2f} s  {n / wall:12,.0f} events/s   (CPU: {here:.1f} s here and in child processes, "
            f"{server:.1f} s in the database server, {(here + server) / n * 1e6:.1f} us/event; "
            f"load average {os.getloadavg()[0]:.1f})",
        )
        return result

    def _say(self, label: str, value: str) -> None:
        self.stdout.write(f"  {label:<44} {value}")

    def _run(self, n, batch_size, cases, rounds):
        from audit.sealing import seal
        from audit.verification import default_workers, verify

        self.stdout.write(f"audit benchmark: {n:,} events, sealer batch {batch_size}, {connection.vendor}")
        t0 = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(PG_INSERT if connection.vendor == "postgresql" else SQLITE_INSERT, {"n": n})
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM ANALYZE {TABLE}")
        insert_s = time.perf_counter() - t0
        self._say("insert (set-based)", f"{insert_s:8.2f} s  {n / insert_s:12,.0f} events/s")

        t0 = time.perf_counter()
        sealed = self._timed("seal", n, lambda: seal(batch_size=batch_size))
        seal_s = time.perf_counter() - t0
        if sealed.sealed != n:
            raise CommandError(f"sealed {sealed.sealed} of {n} events")

        if connection.vendor == "postgresql":
            # Sealing updates every row once: PostgreSQL keeps the old versions until vacuumed. Autovacuum would do
            # it in the background (and skew the step timings below); do it here, and show its cost.
            def vacuum():
                with connection.cursor() as cursor:
                    cursor.execute(f"VACUUM ANALYZE {TABLE}")

            self._timed("vacuum after sealing", n, vacuum)

        workers = default_workers()
        result = self._timed(f"verify ({workers} processes, as audit_verify)", n, verify)
        if not result.ok or result.checked != n:
            raise CommandError(f"verification failed: {result.describe()}")
        if workers > 1:
            self._timed("verify (1 process, for comparison)", n, lambda: verify(workers=1))

        with_audit, without_audit, per_step_events, inside_writes = self._overhead(cases, rounds)
        on, off = statistics.median(with_audit), statistics.median(without_audit)
        self.stdout.write(f"claims workflow in-process, {cases} straight-through cases per round, {rounds} rounds each")
        self._say("step time with audit (median of rounds)", f"{on * 1000:8.3f} ms/step")
        self._say("step time without audit writes", f"{off * 1000:8.3f} ms/step")
        overhead = f"{(on - off) * 1000:8.3f} ms  ({(on - off) / off * 100:+.1f} %)"
        self._say("audit overhead per step (difference)", overhead)
        self._say(
            "time inside audit writes per step (direct)",
            f"{inside_writes * 1000:8.3f} ms  ({inside_writes / on * 100:.1f} % of an audited step)",
        )
        engine_rate = per_step_events / on
        peak_rate = ENGINE_PEAK_STEPS_PER_S * per_step_events
        seal_rate = n / seal_s
        self._say("events per step", f"{per_step_events:8.2f}")
        self._say("engine event rate, one process (measured)", f"{engine_rate:8,.0f} events/s")
        self._say(
            "engine peak event rate (stated)",
            f"{peak_rate:8,.0f} events/s  ({ENGINE_PEAK_STEPS_PER_S} steps/s: the cluster's peak, ECOSYSTEM.md)",
        )
        self._say("sealing rate over the engine's peak", f"{seal_rate / peak_rate:8.1f} x  ({seal_rate:,.0f} events/s)")
        self._say("sealing rate over one engine process", f"{seal_rate / engine_rate:8.1f} x")

    def _overhead(self, cases, rounds):
        from audit.actors import Actor
        from audit.models import AuditEvent
        from operations.engine import advance_case
        from operations.models import Case, CaseStatus, StepRun
        from operations.packs.claims.data import ClaimGenerator
        from operations.packs.claims.install import install, policies_in_db
        from operations.services import case_submit

        actor = Actor.system("bench")
        install(actor=actor, policies=2000)
        generator = ClaimGenerator(policies_in_db(), seed=7)

        def run_round() -> tuple[float, int]:
            steps_before = StepRun.objects.count()
            claims = [generator.claim("straight_through") for _ in range(cases)]
            t0 = time.perf_counter()
            ids = [
                case_submit(workflow_key="claims", reference=c.reference, payload=c.payload, actor=actor).pk
                for c in claims
            ]
            for _ in range(20):
                running = list(Case.objects.filter(pk__in=ids, status=CaseStatus.RUNNING).values_list("pk", flat=True))
                if not running:
                    break
                for pk in running:
                    advance_case(pk)
            elapsed = time.perf_counter() - t0
            steps = StepRun.objects.count() - steps_before
            return elapsed / max(1, steps), steps

        run_round()  # warm caches and connections
        events_before = AuditEvent.objects.count()
        with_audit, without_audit, audited_steps = [], [], 0
        timer = WriteTimer()
        for _ in range(rounds):
            with _patched_audit_writes(timer.wrap):
                per_step, steps = run_round()
            with_audit.append(per_step)
            audited_steps += steps
            with audit_writes_disabled():
                without_audit.append(run_round()[0])
        per_step_events = (AuditEvent.objects.count() - events_before) / max(1, audited_steps)
        return with_audit, without_audit, per_step_events, timer.seconds / max(1, audited_steps)
