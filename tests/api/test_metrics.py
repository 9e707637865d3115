from datetime import timedelta

import pytest
from django.utils import timezone

from operations.models import Case
from tests.api.conftest import escalated_via
from tests.helpers import settle

pytestmark = pytest.mark.django_db


def _finish(caller, generator, scenario, cycle_seconds):
    case_id = caller.submit(generator.claim(scenario)).json()["id"]
    settle(case_id)
    case = Case.objects.get(pk=case_id)
    Case.objects.filter(pk=case_id).update(created_at=case.finished_at - timedelta(seconds=cycle_seconds))
    return case_id


def test_summary_counts_rates_and_cycle_time_percentiles(intake, claim_generator):
    # given four straight-through cases taking 10, 20, 30 and 40 s, and one case waiting on an escalation
    for seconds in (10, 20, 30, 40):
        _finish(intake, claim_generator, "straight_through", seconds)
    escalation = escalated_via(intake, claim_generator)

    summary = intake.get("/api/v1/metrics/summary").json()

    assert summary["cases_by_status"]["completed"] == 4 and summary["cases_by_status"]["waiting"] == 1
    assert summary["cases_total"] == 5 and summary["finished_cases"] == 4
    assert summary["straight_through_rate"] == 1.0
    assert summary["escalations_open_by_reason"] == {escalation.reason: 1}
    assert summary["cycle_time_seconds_p50"] == pytest.approx(20, abs=0.01)
    assert summary["cycle_time_seconds_p95"] == pytest.approx(40, abs=0.01)


def test_a_case_that_needed_a_human_is_not_straight_through(intake, claim_generator):
    from audit.actors import Actor
    from operations.services import escalation_resolve

    _finish(intake, claim_generator, "straight_through", 5)
    escalation = escalated_via(intake, claim_generator)
    escalation_resolve(escalation_id=escalation.pk, actor=Actor.system("t"), resolution="approve", note="ok")
    settle(escalation.case_id)

    assert intake.get("/api/v1/metrics/summary").json()["straight_through_rate"] == 0.5


def test_an_empty_organization_has_no_rate_and_no_percentiles(intake):
    summary = intake.get("/api/v1/metrics/summary").json()
    assert (summary["straight_through_rate"], summary["cycle_time_seconds_p50"]) == (None, None)


def test_prometheus_exposition_has_cases_escalations_queue_steps_and_workers(intake, claim_generator):
    _finish(intake, claim_generator, "straight_through", 5)
    escalation = escalated_via(intake, claim_generator)

    response = intake.get("/metrics")
    text = response.content.decode()

    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert 'selfops_cases{status="completed"} 1.0' in text
    assert f'selfops_escalations_open{{reason="{escalation.reason}"}} 1.0' in text
    assert "selfops_queue_depth " in text  # tasks of the submitted cases, never run by a worker here
    assert "selfops_worker_clusters 0.0" in text
    assert 'selfops_step_duration_seconds_bucket{agent="claims.intake",le="+Inf"}' in text
    assert 'selfops_step_duration_seconds_count{agent="claims.intake"} 2.0' in text


def test_prometheus_needs_a_key(claims_workflow, client):
    assert client.get("/metrics").status_code == 401


def test_step_latency_buckets_count_runs_at_or_under_each_bound(intake, claim_generator):
    from operations.api.metrics import SelfopsCollector
    from operations.models import StepRun

    _finish(intake, claim_generator, "straight_through", 5)
    StepRun.objects.update(duration_ms=7, finished_at=timezone.now())
    StepRun.objects.filter(pk=StepRun.objects.order_by("id").first().pk).update(duration_ms=700)

    family = next(m for m in SelfopsCollector().collect() if m.name == "selfops_step_duration_seconds")
    samples = {(s.labels["agent"], s.labels.get("le")): s.value for s in family.samples if s.name.endswith("bucket")}
    first_agent = StepRun.objects.order_by("id").first().agent_key

    assert samples[(first_agent, "0.005")] == 0
    assert samples[(first_agent, "0.01")] == 0  # the first run took 700 ms
    assert samples[(first_agent, "1.0")] == 1
