"""Real worker processes against the test database: start qcluster subprocesses, kill them, wait for the run to
settle, and count what happened (ECOSYSTEM.md, "Tests that run real workers")."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Q

from audit.models import AuditAction, AuditEvent
from operations.bench.cluster import database_url
from operations.bench.engine_bench import steps_decided_twice
from operations.models import (
    Case,
    CaseStatus,
    Escalation,
    EscalationStatus,
    OutboxEntry,
    OutboxKind,
    OutboxStatus,
    StepRun,
    StepRunStatus,
)

ROOT = Path(__file__).resolve().parents[2]
END_STATE = {CaseStatus.COMPLETED: "completed", CaseStatus.REJECTED: "rejected", CaseStatus.WAITING: "escalated"}


def claims_count(default: int) -> int:
    """How many claims a fault test runs: bounded for CI, raised by hand with SELFOPS_FAULT_CLAIMS for a long run."""
    return int(os.environ.get("SELFOPS_FAULT_CLAIMS", default))


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: production settings on the test database, short leases and retries
    so that recovery takes seconds, and the test pack that lets a test find workers mid-step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFOPS_", "Q_", "DJANGO_"))}
    marks = tmp_path / "marks"
    traces = tmp_path / "traces"
    marks.mkdir(exist_ok=True)
    traces.mkdir(exist_ok=True)
    env.update(
        DJANGO_SETTINGS_MODULE="selfops.settings",
        DATABASE_URL=database_url(),
        REDIS_URL="",
        SECRET_KEY=settings.SECRET_KEY,  # django-q2 signs tasks with it: the test process enqueues too
        SELFOPS_VAR_DIR=str(tmp_path / "var"),
        SELFOPS_PACKS="operations.packs.claims,tests.faults.slowpack",
        SELFOPS_TEST_MARK_DIR=str(marks),
        SELFOPS_TEST_TRACE_DIR=str(traces),
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        Q_WORKERS="2",
        Q_TIMEOUT="8",
        Q_RETRY="10",
        Q_POLL="0.05",
        SELFOPS_AGENT_TIMEOUT="3",
        SELFOPS_STEP_RETRY_BACKOFF="0",
        SELFOPS_SWEEP_STALE_AFTER="20",
        CONN_MAX_AGE="60",
        AXES_ENABLED="false",
        LOG_LEVEL="WARNING",
        Q_LOG_LEVEL="ERROR",
    )
    env.update(extra)
    return env


@dataclass
class Cluster:
    """One `manage.py qcluster` in its own process group; always killed by the fixture that starts it."""

    env: dict
    log: Path
    proc: subprocess.Popen | None = None
    kills: list = field(default_factory=list)

    def start(self) -> Cluster:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def descendants(self) -> set[int]:
        """Every process the cluster started (the sentinel, pusher, monitor and workers), from /proc."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def kill_worker_mid_step(self, marks: Path) -> tuple[int, str] | None:
        """SIGKILL one worker of this cluster that is inside an agent right now (it left its pid in ``marks``)."""
        ours = self.descendants()
        for mark in sorted(marks.iterdir()):
            pid = int(mark.name)
            if pid not in ours:
                continue
            try:
                what = mark.read_text()
            except FileNotFoundError:  # the worker left its agent (and its mark) since the listing: not mid-step
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                mark.unlink(missing_ok=True)
                self.kills.append((pid, what))
                return pid, what
        return None

    def kill(self) -> None:
        """SIGKILL the whole cluster at once (as a machine that loses power)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@contextlib.contextmanager
def clusters(*envs: dict, logs: Path):
    """Start one cluster per environment; whatever happens, kill every process group on the way out."""
    started = [Cluster(env=env, log=logs / f"cluster-{i}.log") for i, env in enumerate(envs)]
    try:
        for cluster in started:
            cluster.start()
        yield started
    finally:
        for cluster in started:
            with contextlib.suppress(Exception):
                cluster.stop()
            with contextlib.suppress(Exception):
                cluster.kill()


def manage(env: dict, *args: str, timeout: float = 120) -> str:
    """Run one management command in a subprocess with a deadline; its whole process group dies on timeout."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{out}")
    return out


def statuses(ids) -> Counter:
    return Counter(dict(Case.objects.filter(pk__in=ids).values_list("status").annotate(n=Count("id")).order_by()))


def pending_effects(ids) -> int:
    return OutboxEntry.objects.filter(case_id__in=ids, status=OutboxStatus.PENDING).count()


def _pending_sample(ids) -> list:
    return list(
        OutboxEntry.objects.filter(case_id__in=ids, status=OutboxStatus.PENDING).values_list(
            "idempotency_key", "attempts", "next_attempt_at", "last_error"
        )[:3]
    )


def _queue_state() -> dict:
    from django.db.models import Max, Min
    from django_q.models import OrmQ

    return OrmQ.objects.aggregate(n=Count("id"), first_lock=Min("lock"), last_lock=Max("lock"))


class Killer:
    """A thread that SIGKILLs one worker of ``cluster`` that is inside an agent every ``every`` seconds, polling the
    marks every few milliseconds so each kill lands at its time without the test loop polling the database that
    often. ``kills`` counts the kills that landed."""

    def __init__(self, cluster: Cluster, marks: Path, *, every: float):
        self.cluster, self.marks, self.every = cluster, marks, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[BaseException] = []

    def _run(self):
        try:
            while not self.done.wait(self.every):
                while not self.done.is_set() and self.cluster.kill_worker_mid_step(self.marks) is None:
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
            self.errors.append(exc)

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(timeout=10)

    @property
    def kills(self) -> int:
        return len(self.cluster.kills)


def submit_all(claims, *, chunk: int = 100) -> list[int]:
    """Submit claims through the real service, ``chunk`` per transaction (each case still gets its own audit event
    and task); returns the case ids in order."""
    from django.db import transaction

    from tests.helpers import submit

    ids = []
    for start in range(0, len(claims), chunk):
        with transaction.atomic():
            ids.extend(submit(c).pk for c in claims[start : start + chunk])
    return ids


class Every:
    """Call ``fn`` at most once per ``seconds`` (a sweep is a write transaction: not every poll)."""

    def __init__(self, seconds: float, fn):
        self.seconds, self.fn, self.last = seconds, fn, 0.0

    def __call__(self):
        if time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            return self.fn()
        return None


def wait_settled(
    ids, *, deadline: float, tick=None, every: float = 1.0, what: str = "the run", stall: float = 45, logs=None
) -> Counter:
    """Poll until no case is running and no owed effect is pending; ``tick`` runs between polls (a sweep, a kill).
    Fails at the deadline, or sooner when nothing moved for ``stall`` seconds (with the clusters' log tails)."""
    t_end = time.monotonic() + deadline
    last, moved = None, time.monotonic()
    while True:
        counts = statuses(ids)
        pending = pending_effects(ids)
        if not counts.get(CaseStatus.RUNNING) and not pending:
            return counts
        if (counts, pending) != last:
            last, moved = (counts, pending), time.monotonic()
        if time.monotonic() > t_end or time.monotonic() - moved > stall:
            stuck = list(Case.objects.filter(pk__in=ids, status=CaseStatus.RUNNING).values_list("pk", flat=True)[:10])
            raise AssertionError(
                f"{what} did not settle within {deadline:.0f} s: {dict(counts)}, pending effects "
                f"{pending}, e.g. running cases {stuck}, effects {_pending_sample(ids)}, queue {_queue_state()}\n"
                + "\n".join(c.tail() for c in logs or [])
            )
        if tick is not None:
            tick()
        time.sleep(every)


@dataclass
class Audit:
    """What the fault tests count after a run."""

    statuses: Counter
    lost_runs: int
    max_attempt: int
    applied_twice: list
    payments_twice: list
    delivered_twice: list
    waiting_without_escalation: list
    agent_errors: set
    unexpected: list


def audit_run(ids, expected: dict[str, str] | None = None) -> Audit:
    """Count, over the given cases, everything that must hold after any fault: every case ended or waits on an open
    escalation; a step was decided (applied or escalated) at most once per round; at most one payment per case and
    one delivery per idempotency key; no attempt number above the maximum."""
    runs = StepRun.objects.filter(case_id__in=ids)
    # a step returned to its agent by a human starts a new round; the fault tests resolve nothing, so one round
    applied_twice = steps_decided_twice(runs)
    payments = (
        OutboxEntry.objects.filter(case_id__in=ids, kind=OutboxKind.PAYMENT)
        .values("case_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    delivered = (
        AuditEvent.objects.filter(action=AuditAction.EFFECT_DELIVERED, case_id__in=ids)
        .values("subject_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    open_escalations = set(
        Escalation.objects.filter(case_id__in=ids, status=EscalationStatus.OPEN).values_list("case_id", flat=True)
    )
    waiting = set(Case.objects.filter(pk__in=ids, status=CaseStatus.WAITING).values_list("pk", flat=True))
    agent_errors = set(
        Escalation.objects.filter(case_id__in=ids, reason="agent_error").values_list("case__reference", flat=True)
    )
    unexpected = []
    if expected is not None:
        for reference, status in Case.objects.filter(pk__in=ids).values_list("reference", "status"):
            if reference not in agent_errors and END_STATE.get(status) != expected[reference]:
                unexpected.append((reference, status, expected[reference]))
    return Audit(
        statuses=statuses(ids),
        lost_runs=runs.filter(status=StepRunStatus.LOST).count(),
        max_attempt=max(runs.values_list("attempt", flat=True), default=0),
        applied_twice=applied_twice,
        payments_twice=list(payments),
        delivered_twice=list(delivered),
        waiting_without_escalation=sorted(waiting - open_escalations),
        agent_errors=agent_errors,
        unexpected=unexpected,
    )


def assert_nothing_lost_nothing_twice(audit: Audit, *, n: int, max_attempts: int) -> None:
    ended = audit.statuses
    assert not ended.get(CaseStatus.RUNNING), ended
    assert sum(ended[s] for s in (CaseStatus.COMPLETED, CaseStatus.REJECTED, CaseStatus.WAITING)) == n, ended
    assert audit.waiting_without_escalation == []
    assert audit.applied_twice == []
    assert audit.payments_twice == []
    assert audit.delivered_twice == []
    assert audit.max_attempt <= max_attempts
    assert audit.unexpected == []


def delivered_payments(ids) -> int:
    return OutboxEntry.objects.filter(
        Q(case_id__in=ids), kind=OutboxKind.PAYMENT, status=OutboxStatus.DELIVERED
    ).count()
