"""Faults 3 and 4, on PostgreSQL: the database restarts mid-run; two clusters (as on two machines) share it."""

import os
import shlex
import subprocess
import time

import pytest
from django.db import connection

from operations.models import Case, CaseStatus
from operations.services import cases_sweep
from tests.faults.harness import (
    Every,
    assert_nothing_lost_nothing_twice,
    audit_run,
    claims_count,
    clusters,
    delivered_payments,
    submit_all,
    wait_settled,
    worker_env,
)
from tests.helpers import submit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (a server to restart, to share)"),
]


def _pg(command_env: str) -> None:
    command = os.environ.get(command_env, "")
    if not command:
        pytest.skip(f"{command_env} is not set: scripts/test.sh exports how to stop and start its PostgreSQL")
    subprocess.run(shlex.split(command), check=True, timeout=90, capture_output=True)


def test_a_database_restart_mid_run_loses_nothing_and_readyz_says_503_meanwhile(claim_generator, tmp_path, client):
    for name in ("SELFOPS_TEST_PG_STOP", "SELFOPS_TEST_PG_START"):
        if not os.environ.get(name):
            pytest.skip(f"{name} is not set: scripts/test.sh exports how to stop and start its PostgreSQL")
    # given a run of claims under way on a real cluster
    n = claims_count(150)
    claims = claim_generator.claims(n)
    expected = {c.reference: c.expected for c in claims}
    ids = [submit(c).pk for c in claims]
    env = worker_env(tmp_path, SELFOPS_TEST_SLOW_AGENTS="claims.communication", SELFOPS_TEST_AGENT_DELAY="0.02")
    with clusters(env, logs=tmp_path) as (cluster,):
        deadline = time.monotonic() + 90
        while Case.objects.filter(pk__in=ids).exclude(status=CaseStatus.RUNNING).count() < n // 5:
            assert time.monotonic() < deadline, cluster.tail()
            time.sleep(0.2)

        # when PostgreSQL stops (fast shutdown: every connection is cut) and comes back a few seconds later
        connection.close()
        _pg("SELFOPS_TEST_PG_STOP")
        try:
            down = client.get("/readyz")
            time.sleep(3)  # the workers meet the dead database
        finally:
            _pg("SELFOPS_TEST_PG_START")
        connection.close()
        up = client.get("/readyz")

        # then readiness said so while it was down and recovered with it
        assert down.status_code == 503 and down.json()["checks"]["database"].startswith("error")
        assert up.status_code == 200, up.content
        # and the workers reconnect by themselves: the run completes (the sweeper hands back tasks that failed)
        wait_settled(
            ids, deadline=180, tick=Every(3.0, cases_sweep), every=0.5, what="the run after a restart", logs=[cluster]
        )
        assert cluster.alive(), cluster.tail()

    audit = audit_run(ids, expected)
    print(f"\n{n} claims across a database restart: {dict(audit.statuses)}, {delivered_payments(ids)} payments")
    assert_nothing_lost_nothing_twice(audit, n=n, max_attempts=3)


def test_two_clusters_sharing_one_database_apply_every_step_once(claim_generator, tmp_path):
    # given N claims (the 2,000; SELFOPS_FAULT_CLAIMS changes it) and two clusters, as on two machines, each
    # tracing which claims its workers touched
    n = claims_count(2000)
    claims = claim_generator.claims(n)
    expected = {c.reference: c.expected for c in claims}
    # (a case waiting in the long queue of a 2,000-claim run is not stale: the sweeper must not re-enqueue it)
    envs = [
        worker_env(
            tmp_path,
            SELFOPS_TEST_CLUSTER=name,
            SELFOPS_TEST_SLOW_AGENTS="claims.intake",
            SELFOPS_SWEEP_STALE_AFTER="600",
        )
        for name in "ab"
    ]

    # when both work the same queue at once (the claims are submitted while they start)
    t0 = time.monotonic()
    with clusters(*envs, logs=tmp_path) as running:
        ids = submit_all(claims)
        wait_settled(
            ids, deadline=max(240, n // 2), tick=Every(5.0, cases_sweep), every=0.5, what="two clusters", logs=running
        )
    elapsed = time.monotonic() - t0

    # then both did part of the work, and every step was applied once: one decision per (case, step), one payment
    # per approved claim, each delivered once
    traces = tmp_path / "traces"
    per_cluster = {name: sum(len(p.read_text().splitlines()) for p in traces.glob(f"{name}-*.log")) for name in "ab"}
    audit = audit_run(ids, expected)
    print(f"\n{n} claims on two clusters in {elapsed:.1f} s: intake per cluster {per_cluster}, {dict(audit.statuses)}")
    assert per_cluster["a"] > 0 and per_cluster["b"] > 0
    assert_nothing_lost_nothing_twice(audit, n=n, max_attempts=3)
    assert delivered_payments(ids) == sum(1 for c in claims if c.expected == "completed")
