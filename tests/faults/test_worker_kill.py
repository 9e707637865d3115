"""Fault 1: workers SIGKILLed in the middle of a step, again and again, while a run of claims goes through real
qcluster processes. Afterwards nothing is lost, stuck or done twice, and no step went past its attempt limit."""

import pytest

from operations.services import cases_sweep
from tests.faults.harness import (
    Every,
    assert_nothing_lost_nothing_twice,
    audit_run,
    claims_count,
    clusters,
    delivered_payments,
    wait_settled,
    worker_env,
)
from tests.helpers import submit

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_workers_killed_mid_step_lose_nothing_and_apply_nothing_twice(claim_generator, tmp_path, settings):
    # given N claims (120 in CI; SELFOPS_FAULT_CLAIMS=1000 for the full run), committed with their tasks
    n = claims_count(120)
    settings.SELFOPS = {**settings.SELFOPS, "SWEEP_STALE_AFTER": 20}
    claims = claim_generator.claims(n)
    expected = {c.reference: c.expected for c in claims}
    ids = [submit(c).pk for c in claims]
    # and a cluster whose payment and letter agents linger, so that kills land inside a step
    env = worker_env(
        tmp_path,
        SELFOPS_TEST_SLOW_AGENTS="claims.payment,claims.communication",
        SELFOPS_TEST_AGENT_DELAY="0.03",
    )
    marks = tmp_path / "marks"
    max_attempts = int(env.get("SELFOPS_STEP_MAX_ATTEMPTS", settings.SELFOPS["STEP_MAX_ATTEMPTS"]))

    with clusters(env, logs=tmp_path) as (cluster,):
        # when a worker that is inside an agent is SIGKILLed every 0.4 s while the run goes on
        kill = Every(0.4, lambda: cluster.kill_worker_mid_step(marks))
        sweep = Every(2.0, cases_sweep)  # the scheduled sweeper ticks once a minute; the test does not wait for it

        def kill_and_sweep():
            kill()
            sweep()
            assert cluster.alive(), cluster.tail()

        wait_settled(
            ids, deadline=max(240, n), tick=kill_and_sweep, every=0.1, what="the run under worker kills", logs=[cluster]
        )

    # then workers really died mid-step, each death left one lost attempt, and the run recovered from all of them
    kills = len(cluster.kills)
    audit = audit_run(ids, expected)
    print(
        f"\n{n} claims, {kills} workers killed mid-step, {audit.lost_runs} lost step runs, "
        f"{len(audit.agent_errors)} agent_error escalations, outcomes {dict(audit.statuses)}, "
        f"{delivered_payments(ids)} payments delivered"
    )
    assert kills >= 3, "the kills never landed mid-step: the test proves nothing"
    assert 1 <= audit.lost_runs <= kills
    assert_nothing_lost_nothing_twice(audit, n=n, max_attempts=max_attempts)
    # every approved claim was paid exactly once
    approved = sum(1 for c in claims if c.expected == "completed")
    assert delivered_payments(ids) >= approved - len(audit.agent_errors)
