"""``manage.py bench engine``: the engine's throughput and latency with its references, measured in one run.

References: (a) the same workflow executed in-process without the queue (the engine's own floor); (b) a plain
"one django-q2 task per step" implementation of the same steps; (c) bare django-q2 no-op task throughput.
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import ExitStack, contextmanager
from unittest import mock

from django.db import connection, transaction
from django.db.models import Count, F
from django.test.utils import CaptureQueriesContext
from django_q.models import OrmQ
from django_q.tasks import async_task

from audit.actors import Actor
from operations import engine
from operations.bench.cluster import peak_rss_mb, qcluster, wait_until
from operations.models import (
    Case,
    CaseStatus,
    Escalation,
    OutboxEntry,
    OutboxStatus,
    StepRun,
    StepRunStatus,
    Workflow,
)
from operations.packs.claims.data import ClaimGenerator
from operations.packs.claims.definition import WORKFLOW_KEY
from operations.packs.claims.install import install, policies_in_db
from operations.services import case_submit

ACTOR = Actor.system("bench")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def steps_decided_twice(step_runs) -> list[tuple[int, int, int]]:
    """(case, step, times) for each step of these runs decided (applied or escalated) more than once. With nobody
    returning a step to its agent, any row here is a step applied twice (the benchmark and the fault tests count it)."""
    decided = step_runs.filter(status__in=(StepRunStatus.SUCCEEDED, StepRunStatus.ESCALATED))
    rows = decided.values_list("case_id", "step_id").annotate(n=Count("id")).filter(n__gt=1).order_by()
    return list(rows)


class EngineBench:
    def __init__(self, *, out, workers: int = 2, seed: int | None = None):
        self.out = out
        self.workers = workers
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1, 10**6)
        self.generator = None

    def say(self, text: str) -> None:
        self.out(text)

    # --- setup ------------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        if not Workflow.objects.filter(key=WORKFLOW_KEY).exists():
            self.say("installing the claims demo pack …")
            install(actor=ACTOR, policies=20000)
        self.generator = ClaimGenerator(policies_in_db(), seed=self.seed)
        if OrmQ.objects.exists():
            self.say(f"note: {OrmQ.objects.count()} tasks were already queued; they are processed during the run")

    def submit(self, n: int, *, enqueue=None) -> list[int]:
        ids = []
        patch = mock.patch("operations.services.enqueue_advance", enqueue) if enqueue else _nullcontext()
        with patch:
            for claim in self.generator.stream(n):
                ids.append(
                    case_submit(
                        workflow_key=WORKFLOW_KEY, reference=claim.reference, payload=claim.payload, actor=ACTOR
                    ).pk
                )
        return ids

    @staticmethod
    def running(ids: list[int]) -> int:
        return Case.objects.filter(pk__in=ids, status=CaseStatus.RUNNING).count() if ids else 0

    @staticmethod
    def all_settled(lo: int, hi: int) -> bool:
        return not Case.objects.filter(pk__gte=lo, pk__lte=hi, status=CaseStatus.RUNNING).exists()

    @staticmethod
    def applied_twice(lo: int, hi: int) -> int:
        """(case, step) pairs decided more than once: must be 0 however many workers and clusters ran."""
        return len(steps_decided_twice(StepRun.objects.filter(case_id__gte=lo, case_id__lte=hi)))

    @staticmethod
    def steps_of(lo: int, hi: int) -> int:
        return StepRun.objects.filter(case_id__gte=lo, case_id__lte=hi).count()

    @staticmethod
    def auto_latencies(lo: int, hi: int) -> list[float]:
        """Submission-to-final-state seconds of claims that needed no human."""
        touched = Escalation.objects.filter(case_id__gte=lo, case_id__lte=hi).values("case_id")
        rows = (
            Case.objects.filter(pk__gte=lo, pk__lte=hi, finished_at__isnull=False)
            .exclude(pk__in=touched)
            .annotate(latency=F("finished_at") - F("created_at"))
            .values_list("latency", flat=True)
        )
        return [r.total_seconds() for r in rows]

    # --- measurements -------------------------------------------------------------------------------------------

    def noop_rate(self, proc, k: int) -> float:
        with transaction.atomic():
            for _ in range(k):
                async_task("operations.bench.tasks.noop")
        elapsed = wait_until(lambda: not OrmQ.objects.exists(), timeout=600, proc=proc)
        return k / elapsed

    def engine_run(self, proc, n: int) -> dict:
        t0 = time.perf_counter()
        ids = self.submit(n)
        submitted = time.perf_counter() - t0
        lo, hi = min(ids), max(ids)
        wait_until(lambda: self.all_settled(lo, hi), timeout=3600, interval=0.2, proc=proc)
        elapsed = time.perf_counter() - t0
        steps = self.steps_of(lo, hi)
        statuses = dict(
            Case.objects.filter(pk__gte=lo, pk__lte=hi).values_list("status").annotate(n=Count("id")).order_by()
        )
        latencies = self.auto_latencies(lo, hi)
        wait_until(
            lambda: (
                not OutboxEntry.objects.filter(case_id__gte=lo, case_id__lte=hi, status=OutboxStatus.PENDING).exists()
            ),
            timeout=600,
            proc=proc,
        )
        return {
            "claims": n,
            "steps": steps,
            "elapsed_s": elapsed,
            "submit_s": submitted,
            "claims_per_s": n / elapsed,
            "steps_per_s": steps / elapsed,
            "statuses": statuses,
            "steps_applied_twice": self.applied_twice(lo, hi),
            "p50_latency_s": percentile(latencies, 0.5),
            "p95_latency_s": percentile(latencies, 0.95),
            "p99_latency_s": percentile(latencies, 0.99),
        }

    def naive_run(self, proc, n: int) -> dict:
        def enqueue(case_id):
            async_task("operations.bench.tasks.naive_step", case_id)

        t0 = time.perf_counter()
        ids = self.submit(n, enqueue=enqueue)
        lo, hi = min(ids), max(ids)
        wait_until(lambda: self.all_settled(lo, hi), timeout=3600, interval=0.2, proc=proc)
        elapsed = time.perf_counter() - t0
        steps = self.steps_of(lo, hi)
        return {"claims": n, "steps": steps, "claims_per_s": n / elapsed, "steps_per_s": steps / elapsed}

    def in_process_run(self, n: int) -> dict:
        ids = self.submit(n, enqueue=lambda case_id: None)
        t0 = time.perf_counter()
        for case_id in ids:
            engine.advance_case(case_id)
        elapsed = time.perf_counter() - t0
        steps = self.steps_of(min(ids), max(ids))
        return {"claims": n, "steps": steps, "claims_per_s": n / elapsed, "steps_per_s": steps / elapsed}

    def queries_per_step(self, n: int = 20) -> float:
        ids = self.submit(n, enqueue=lambda case_id: None)
        with CaptureQueriesContext(connection) as ctx:
            for case_id in ids:
                engine.advance_case(case_id)
        steps = self.steps_of(min(ids), max(ids))
        return len(ctx.captured_queries) / max(1, steps)

    # --- the whole run ------------------------------------------------------------------------------------------

    def run(self, *, cases: int, reference_cases: int, noop_tasks: int, clusters: int = 1) -> dict:
        self.prepare()
        result: dict = {"database": connection.vendor, "workers": self.workers, "seed": self.seed}
        self.say(f"database {connection.vendor}, {self.workers} workers, seed {self.seed}")

        self.say(f"(a) in-process floor: {reference_cases} claims without the queue …")
        result["in_process"] = self.in_process_run(reference_cases)
        result["queries_per_step"] = self.queries_per_step()

        with qcluster(workers=self.workers) as proc:
            wait_until(lambda: not OrmQ.objects.exists(), timeout=120, proc=proc)  # leftovers drained, cluster up
            self.noop_rate(proc, 50)  # warm-up
            self.say(f"(c) bare django-q2: {noop_tasks} no-op tasks …")
            result["noop_tasks_per_s"] = self.noop_rate(proc, noop_tasks)
            self.say(f"engine: {cases} claims through the real cluster …")
            result["engine"] = self.engine_run(proc, cases)
            self.say(f"(b) one task per step: {reference_cases} claims …")
            result["one_task_per_step"] = self.naive_run(proc, reference_cases)
            result["worker_peak_rss_mb"] = round(max(peak_rss_mb(proc.pid).values(), default=0), 1)

        if clusters > 1:  # scale-out: the same claims through several clusters at once, as on several machines
            self.say(f"scale-out: {cases} claims through {clusters} clusters of {self.workers} workers …")
            with ExitStack() as stack:
                procs = [stack.enter_context(qcluster(workers=self.workers)) for _ in range(clusters)]
                wait_until(lambda: not OrmQ.objects.exists(), timeout=120, proc=procs[0])
                self.noop_rate(procs[0], 50)  # warm-up: the clusters are up and pulling from the queue
                scaled = self.engine_run(procs[0], cases)
            result["scale_out"] = {
                "clusters": clusters,
                **scaled,
                "ratio_vs_one_cluster": scaled["claims_per_s"] / result["engine"]["claims_per_s"],
            }

        e = result["engine"]
        result.update(
            claims_per_s=e["claims_per_s"],
            steps_per_s=e["steps_per_s"],
            p95_latency_s=e["p95_latency_s"],
            ratio_vs_in_process=e["claims_per_s"] / result["in_process"]["claims_per_s"],
            ratio_vs_one_task_per_step=e["claims_per_s"] / result["one_task_per_step"]["claims_per_s"],
            steps_per_s_vs_noop_tasks_per_s=e["steps_per_s"] / result["noop_tasks_per_s"],
        )
        return result

    def run_rate(self, *, rate: float, duration: float) -> dict:
        """Keep ``rate`` claims/s flowing for ``duration`` s; report decision latency of auto-approved claims."""
        self.prepare()
        with qcluster(workers=self.workers) as proc:
            wait_until(lambda: not OrmQ.objects.exists(), timeout=120, proc=proc)
            self.noop_rate(proc, 20)
            ids, t0 = [], time.perf_counter()
            claims = self.generator.stream(int(rate * duration))
            for i, claim in enumerate(claims):
                ids.append(
                    case_submit(
                        workflow_key=WORKFLOW_KEY, reference=claim.reference, payload=claim.payload, actor=ACTOR
                    ).pk
                )
                time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
            offered = len(ids) / (time.perf_counter() - t0)
            lo, hi = min(ids), max(ids)
            wait_until(lambda: self.all_settled(lo, hi), timeout=600, interval=0.2, proc=proc)
            rss = round(max(peak_rss_mb(proc.pid).values(), default=0), 1)
        latencies = self.auto_latencies(lo, hi)
        return {
            "database": connection.vendor,
            "workers": self.workers,
            "rate": rate,
            "duration_s": duration,
            "offered_claims_per_s": offered,
            "claims": len(ids),
            "auto_claims": len(latencies),
            "p50_latency_s": percentile(latencies, 0.5),
            "p95_latency_s": percentile(latencies, 0.95),
            "p99_latency_s": percentile(latencies, 0.99),
            "mean_latency_s": statistics.fmean(latencies) if latencies else None,
            "worker_peak_rss_mb": rss,
        }


@contextmanager
def _nullcontext():
    yield
