"""Dashboard figures: the Wilson interval, cycle-time percentiles, straight-through and override rates, SLA."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from operations import metrics
from operations.models import Case, CaseStatus, Escalation, EscalationStatus
from tests.helpers import settle, submit
from tests.portal.helpers import escalate

pytestmark = pytest.mark.django_db


def test_wilson_interval_matches_the_textbook_values():
    low, high = metrics.wilson(10, 100)
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)
    assert metrics.wilson(0, 0) is None
    assert metrics.wilson(0, 20)[0] == 0.0 and metrics.wilson(20, 20)[1] == 1.0


def test_cycle_time_percentiles_come_from_fixed_histograms_within_a_bucket(claim_generator):
    now = timezone.now()
    cases = []
    for _ in range(5):
        case = submit(claim_generator.claim("straight_through"))
        settle(case.pk)
        cases.append(case)
    # given completion times of 10, 20, 30, 40 and 110 seconds after submission, finished a minute ago
    for case, seconds in zip(cases, [10, 20, 30, 40, 110], strict=True):
        end = now - timedelta(minutes=1)
        Case.objects.filter(pk=case.pk).update(created_at=end - timedelta(seconds=seconds), finished_at=end)

    cycle = metrics.organisation_figures(now)["cycle"]

    # then the median lies in the bucket of 30 s and the p95 in the bucket of 110 s (ten buckets a decade)
    assert cycle["n"] == 5 and cycle["approximate"]
    assert 10**1.4 <= cycle["p50"] <= 10**1.5
    assert 10**2.0 <= cycle["p95"] <= 10**2.1


def test_straight_through_and_override_rates(claim_generator, people):
    from audit.actors import Actor
    from operations.services import escalation_resolve

    clean = submit(claim_generator.claim("straight_through"))
    settle(clean.pk)
    touched = escalate(claim_generator, amount=Decimal("1000"))
    escalation_resolve(
        escalation_id=touched.pk, actor=Actor.user(people["handler"]), resolution="amend", amount="900", note="n"
    )
    settle(touched.case_id)
    approved = escalate(claim_generator, amount=Decimal("1000"))
    escalation_resolve(escalation_id=approved.pk, actor=Actor.user(people["handler"]), resolution="approve", note="n")
    settle(approved.case_id)
    figures = metrics.organisation_figures(timezone.now())
    stp, quality = figures["straight_through"], figures["quality"]

    assert Case.objects.filter(status=CaseStatus.COMPLETED).count() == 3
    assert (stp["untouched"], stp["total"]) == (1, 3)
    assert (quality["overridden"], quality["decided"]) == (1, 2) and quality["override_rate"] == 0.5
    assert quality["override_ci"][0] < 0.5 < quality["override_ci"][1]


def test_sla_compliance_counts_on_time_resolutions_and_breaches(claim_generator, people):
    from operations.services import escalations_sla_check

    now = timezone.now()
    late = escalate(claim_generator)
    on_time = escalate(claim_generator)
    Escalation.objects.filter(pk=late.pk).update(
        status=EscalationStatus.RESOLVED, resolution="approve", resolved_at=now, sla_deadline=now - timedelta(hours=1)
    )
    Escalation.objects.filter(pk=on_time.pk).update(
        status=EscalationStatus.RESOLVED, resolution="approve", resolved_at=now, sla_deadline=now + timedelta(hours=1)
    )
    breached = escalate(claim_generator)
    Escalation.objects.filter(pk=breached.pk).update(sla_deadline=now - timedelta(minutes=5))
    escalations_sla_check(now=now)

    sla = metrics.organisation_figures(now + timedelta(seconds=1))["sla"]

    assert (sla["on_time"], sla["resolved"], sla["compliance"]) == (1, 2, 0.5)
    assert sla["breaches"]["today"] == 1 and sla["open_breached"] == 1


def test_the_agent_table_shows_time_tokens_and_money_per_agent(claim_generator):
    from decimal import Decimal

    from django.utils import timezone

    from operations import metrics
    from operations.models import StepRun
    from tests.helpers import settle, submit

    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    StepRun.objects.filter(case=case, step__key="communication").update(
        tokens_in=1200, tokens_out=300, cost=Decimal("0.004500")
    )

    rows = {r["agent"]: r for r in metrics.organisation_figures(timezone.now())["agents"]}

    letters = rows["claims.communication"]
    assert (letters["tokens"], letters["cost"]) == (1500, Decimal("0.004500"))
    assert letters["avg_ms"] is not None and rows["claims.intake"]["tokens"] == 0


def _direct(now):
    """The dashboard's figures computed straight from the tables, one whole day at a time, nothing stored."""
    first = metrics._midnight(now) - (metrics.DAYS - 1) * metrics.DAY
    days = [first + d * metrics.DAY for d in range(metrics.DAYS)]
    return metrics.figures_from([(day, metrics.period_parts(day, min(now, day + metrics.DAY))) for day in days], now)


def _comparable(figures):
    out = {k: v for k, v in figures.items() if k not in ("latency", "agents", "workflows")}
    out["latency"] = [
        (r["step"].pk, r["runs"], round(r["avg_ms"], 6), r["p50_ms"], r["p95_ms"]) for r in figures["latency"]
    ]
    out["agents"] = [
        (a["agent"], a["runs"], a["escalated"], a["decided"], a["agreement"], a["tokens"]) for a in figures["agents"]
    ]
    return out


def test_the_rollup_gives_the_figures_of_a_direct_computation_also_after_days_roll_over(claims_workflow):
    from operations.bench.portal_load import PortalLoad
    from operations.models import DashboardRollup, StepRun
    from operations.selectors import workflow_steps

    # given two months of history (finished cases, step runs, resolved and open escalations, breaches)
    PortalLoad(cases=400, events=0, open_escalations=40, out=lambda line: None).run(
        workflow=claims_workflow, steps=workflow_steps(claims_workflow.pk), users=[]
    )
    real_now = timezone.now()
    earlier = real_now - timedelta(hours=30)  # "today" then is yesterday or the day before now

    # when the dashboard is computed then (storing closed days and that day's closed hours) and again now
    at_first = metrics.organisation_figures(earlier)
    stored_then = set(DashboardRollup.objects.values_list("period", "start"))
    at_last = metrics.organisation_figures(real_now)

    # then each equals the direct computation at its time, though the day that was "today" rolled over in between
    assert {p for p, _ in stored_then} == {DashboardRollup.DAY, DashboardRollup.HOUR}
    assert (DashboardRollup.DAY, metrics._midnight(earlier)) in set(
        DashboardRollup.objects.values_list("period", "start")
    )
    assert _comparable(at_first) == _comparable(_direct(earlier))
    assert _comparable(at_last) == _comparable(_direct(real_now))
    # and the figures are the tables' own numbers: cases in per day, straight-through, SLA, agents' runs
    since = metrics._midnight(real_now) - 29 * metrics.DAY
    in_per_day = {}
    for created in Case.objects.filter(created_at__gte=since).values_list("created_at", flat=True):
        in_per_day[created.date().isoformat()] = in_per_day.get(created.date().isoformat(), 0) + 1
    assert dict(zip(at_last["series"]["labels"], at_last["series"]["in"], strict=True)) == {
        d: in_per_day.get(d, 0) for d in at_last["series"]["labels"]
    }
    completed = Case.objects.filter(status=CaseStatus.COMPLETED, finished_at__gte=since, finished_at__lt=real_now)
    touched = completed.filter(escalations__isnull=False).distinct().count()
    assert at_last["straight_through"]["total"] == completed.count() > 0
    assert at_last["straight_through"]["untouched"] == completed.count() - touched
    resolved = Escalation.objects.filter(status=EscalationStatus.RESOLVED, resolved_at__gte=since)
    assert at_last["sla"]["resolved"] == resolved.count() > 0
    assert at_last["sla"]["breaches"]["30d"] == Escalation.objects.filter(sla_breached_at__gte=since).count() > 0
    week = metrics._midnight(real_now) - 6 * metrics.DAY
    runs = {a["agent"]: a["runs"] for a in at_last["agents"]}
    assert runs["claims.intake"] == StepRun.objects.filter(agent_key="claims.intake", started_at__gte=week).count()
    # and the median cycle time lies within a bucket (±26%) of the exact one
    seconds = sorted((f - c).total_seconds() for c, f in completed.values_list("created_at", "finished_at"))
    exact = seconds[len(seconds) // 2]
    assert exact / 1.26 <= at_last["cycle"]["p50"] <= exact * 1.26


def test_a_schedule_stores_the_closed_periods_and_forgets_hours_of_closed_days():
    from django_q.models import Schedule

    from operations import tasks
    from operations.models import DashboardRollup

    # given an hour row of a day long closed (as left by an earlier day's dashboard)
    old_hour = metrics._midnight(timezone.now()) - 3 * metrics.DAY
    DashboardRollup.objects.create(period=DashboardRollup.HOUR, start=old_hour, parts={"in": 1})

    tasks.dashboard_rollup()

    # then the closed days are stored (28 in the first minutes after midnight), the stale hour is gone,
    # and migrate installed the schedule
    assert Schedule.objects.filter(func="operations.tasks.dashboard_rollup").exists()
    assert DashboardRollup.objects.filter(period=DashboardRollup.DAY).count() >= 28
    assert not DashboardRollup.objects.filter(period=DashboardRollup.HOUR, start=old_hour).exists()
