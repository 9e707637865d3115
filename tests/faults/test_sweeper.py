"""Fault 2: stuck work. The sweeper finds running cases nobody advances (an expired lease: the worker died; no lease
and no progress: the task was lost) and re-enqueues them within its interval, once per interval, not at every tick.
With the Redis broker (no receipts), killing the whole cluster mid-run loses tasks in flight: the sweeper recovers
every case."""

import contextlib
import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from audit.models import AuditAction, AuditEvent
from operations import engine
from operations.models import Case, CaseStatus, StepRun, StepRunStatus
from operations.receivers import SCHEDULES
from operations.services import cases_sweep
from tests.faults.harness import (
    Every,
    assert_nothing_lost_nothing_twice,
    audit_run,
    claims_count,
    clusters,
    manage,
    wait_settled,
    worker_env,
)
from tests.helpers import submit


@pytest.mark.django_db
def test_the_sweeper_requeues_exactly_the_cases_nobody_advances(claim_generator, settings):
    # given four running cases at a fixed "now": an expired lease, a live lease, a fresh case, a long-idle case
    settings.SELFOPS = {**settings.SELFOPS, "SWEEP_STALE_AFTER": 120}
    lease = engine._lease_seconds()
    now = timezone.now()
    dead, busy, fresh, idle = (submit(claim_generator.claim("straight_through")) for _ in range(4))
    assert engine._acquire(dead.pk, "worker-that-died") and engine._acquire(busy.pk, "worker-alive")
    Case.objects.filter(pk=dead.pk).update(
        lease_expires_at=now - timedelta(seconds=1), updated_at=now - timedelta(seconds=lease + 1)
    )
    Case.objects.filter(pk=busy.pk).update(lease_expires_at=now + timedelta(seconds=30))
    Case.objects.filter(pk=fresh.pk).update(updated_at=now - timedelta(seconds=60))
    Case.objects.filter(pk=idle.pk).update(updated_at=now - timedelta(seconds=121))
    queued = OrmQ.objects.count()

    # when the sweeper runs
    swept = cases_sweep(now=now)

    # then it re-enqueued the dead worker's case and the idle one, with an audit event each, and nothing else
    assert swept == 2 and OrmQ.objects.count() == queued + 2
    requeued = AuditEvent.objects.filter(action=AuditAction.CASE_REQUEUED).values_list("case_id", "data")
    assert dict(requeued) == {
        dead.pk: {"lease_expired": True, "step_attempt": 1},
        idle.pk: {"lease_expired": False, "step_attempt": 0},
    }
    # a second tick within the interval does not pile duplicate tasks on a queue that may just be long
    assert cases_sweep(now=now + timedelta(seconds=5)) == 0
    # one lease period later, still nobody has taken the dead worker's case: it is handed over again (with, by then,
    # the busy worker's expired lease and the fresh case gone stale)
    assert cases_sweep(now=now + timedelta(seconds=lease + 2)) == 3
    assert AuditEvent.objects.filter(action=AuditAction.CASE_REQUEUED, case_id=dead.pk).count() == 2
    # and the re-enqueued task finishes the case, recording the attempt the dead worker lost
    engine.advance_case(dead.pk)
    dead.refresh_from_db()
    assert dead.status == CaseStatus.COMPLETED
    assert StepRun.objects.filter(case=dead, status=StepRunStatus.LOST).count() == 1


@pytest.mark.django_db
def test_the_sweeper_is_scheduled_every_minute():
    # the interval within which stuck work is found: the schedule that migrate installs, at most a minute apart
    assert ("selfops: sweep stale cases", "operations.tasks.sweep", 1) in SCHEDULES
    schedule = Schedule.objects.get(name="selfops: sweep stale cases")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 1, -1)


def _redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set: scripts/test.sh starts a throwaway Redis when redis-server exists")
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=2).flushdb()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {url} is unreachable: {exc}")
    return url


def _cases_mid_step(marks) -> set[int]:
    found = set()
    for mark in marks.iterdir():
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            found.add(int(mark.read_text().split()[0]))
    return found


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_killing_the_whole_redis_cluster_mid_run_loses_no_case(claims_workflow, tmp_path):
    # given the Redis broker (no receipts: a task taken from Redis lives only in the cluster's memory)
    redis_url = _redis_url()
    n = claims_count(100)
    env = worker_env(
        tmp_path,
        REDIS_URL=redis_url,
        SELFOPS_TEST_SLOW_AGENTS="claims.assessment,claims.communication",
        SELFOPS_TEST_AGENT_DELAY="0.05",
    )
    marks = tmp_path / "marks"
    # and claims submitted through the ordinary path (the simulate command, which enqueues to Redis on commit)
    manage(env, "simulate", "--cases", str(n), "--seed", "7")
    ids = list(Case.objects.values_list("pk", flat=True))
    assert len(ids) == n

    with clusters(env, logs=tmp_path / "first") as (first,):
        # when the whole cluster is SIGKILLed while workers are inside agents (once a quarter of the run is done, the
        # marks are read and the cluster killed at once: a mark seen and gone before it is read proves nothing)
        deadline = time.monotonic() + 90
        in_flight: set[int] = set()
        while time.monotonic() < deadline and not in_flight:
            if Case.objects.exclude(status=CaseStatus.RUNNING).count() < n // 4:
                time.sleep(0.05)
                continue
            in_flight = _cases_mid_step(marks)
            time.sleep(0 if in_flight else 0.002)
        first.kill()
    assert in_flight, "no worker was mid-step when the cluster died: the test proves nothing"
    for mark in marks.iterdir():
        mark.unlink()
    running_after_crash = Case.objects.filter(pk__in=ids, status=CaseStatus.RUNNING).count()

    # and a new cluster starts, with the sweeper (run as the schedule would, by the `sweep` command) recovering
    sweep_env = {**env, "SELFOPS_SWEEP_STALE_AFTER": "10"}
    with clusters(env, logs=tmp_path / "second") as (second,):
        sweep = Every(3.0, lambda: manage(sweep_env, "sweep", timeout=60))
        wait_settled(ids, deadline=180, tick=sweep, every=0.5, what="the run after a cluster crash", logs=[second])

    # then every case ended or waits on a person, the cases that were mid-step were handed over by the sweeper,
    # and nothing was applied twice
    audit = audit_run(ids)
    requeued = set(
        AuditEvent.objects.filter(action=AuditAction.CASE_REQUEUED, case_id__in=ids).values_list("case_id", flat=True)
    )
    print(
        f"\n{n} claims, cluster killed with {len(in_flight)} cases mid-step and {running_after_crash} running; "
        f"{len(requeued)} cases re-enqueued by the sweeper; outcomes {dict(audit.statuses)}"
    )
    assert in_flight <= requeued
    assert_nothing_lost_nothing_twice(audit, n=n, max_attempts=3)
    assert audit.lost_runs >= len(in_flight)
