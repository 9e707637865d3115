"""Fault 1: workers SIGKILLed in the middle of a step, again and again, while a run of claims goes through real
qcluster processes. Afterwards nothing is lost, stuck or done twice, and no step went past its attempt limit."""

import pytest
from django.db import connection

from operations.services import cases_sweep
from tests.faults.harness import (
    Every,
    Killer,
    assert_nothing_lost_nothing_twice,
    audit_run,
    claims_count,
    clusters,
    delivered_payments,
    submit_all,
    wait_settled,
    worker_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Leases (the django-q2 task timeout) and redelivery short enough that a killed step is taken up again within
# seconds, long enough that no live step outlasts its lease on a loaded 2-core machine (a lost run without a kill
# would fail the count below). The sweeper re-enqueues only expired leases here: a case merely waiting in the long
# queue of a 1,000-claim run is not "stale", and re-enqueueing those would flood the queue.
LEASE, REDELIVERY, STALE = 8, 10, 600


def test_workers_killed_mid_step_lose_nothing_and_apply_nothing_twice(claim_generator, tmp_path, settings):
    # given N claims (the 1,000 on PostgreSQL; 250 on SQLite, whose single writer makes the same run four
    # times as long while proving the same; SELFOPS_FAULT_CLAIMS changes it) and a cluster whose payment and letter
    # agents linger, so that kills land inside a step
    n = claims_count(1000 if connection.vendor == "postgresql" else 250)
    settings.SELFOPS = {**settings.SELFOPS, "SWEEP_STALE_AFTER": STALE}
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": LEASE}  # the test's sweeper knows the workers' lease
    claims = claim_generator.claims(n)
    expected = {c.reference: c.expected for c in claims}
    env = worker_env(
        tmp_path,
        SELFOPS_TEST_SLOW_AGENTS="claims.payment,claims.communication",
        SELFOPS_TEST_AGENT_DELAY="0.01",
        Q_TIMEOUT=str(LEASE),
        Q_RETRY=str(REDELIVERY),
        SELFOPS_AGENT_TIMEOUT="2",
        SELFOPS_SWEEP_STALE_AFTER=str(STALE),
    )
    marks = tmp_path / "marks"
    max_attempts = int(env.get("SELFOPS_STEP_MAX_ATTEMPTS", settings.SELFOPS["STEP_MAX_ATTEMPTS"]))

    with clusters(env, logs=tmp_path) as (cluster,):
        ids = submit_all(claims)  # while the cluster starts
        # when a worker that is inside an agent is SIGKILLed every 0.75 s while the run goes on
        with Killer(cluster, marks, every=0.75) as killer:
            sweep = Every(2.0, cases_sweep)  # the scheduled sweeper ticks once a minute; the test does not wait

            def sweep_and_check():
                sweep()
                assert cluster.alive(), cluster.tail()
                assert not killer.errors, killer.errors

            wait_settled(ids, deadline=max(240, n), tick=sweep_and_check, every=0.5, what="the run", logs=[cluster])

    # then workers really died mid-step, again and again, each death left one lost attempt, and the run recovered
    kills = killer.kills
    audit = audit_run(ids, expected)
    print(
        f"\n{n} claims, {kills} workers killed mid-step, {audit.lost_runs} lost step runs, "
        f"{len(audit.agent_errors)} agent_error escalations, outcomes {dict(audit.statuses)}, "
        f"{delivered_payments(ids)} payments delivered"
    )
    assert kills >= max(3, n // 50), f"only {kills} kills landed mid-step: the test proves too little"
    assert max(1, n // 100) <= audit.lost_runs <= kills
    assert_nothing_lost_nothing_twice(audit, n=n, max_attempts=max_attempts)
    # every approved claim was paid exactly once
    approved = sum(1 for c in claims if c.expected == "completed")
    assert delivered_payments(ids) >= approved - len(audit.agent_errors)
