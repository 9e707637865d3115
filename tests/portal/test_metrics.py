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


def test_cycle_time_percentiles_on_either_database(claim_generator):
    now = timezone.now()
    cases = []
    for _ in range(5):
        case = submit(claim_generator.claim("straight_through"))
        settle(case.pk)
        cases.append(case)
    # given completion times of 10, 20, 30, 40 and 100 seconds after submission
    for case, seconds in zip(cases, [10, 20, 30, 40, 100], strict=True):
        start = now - timedelta(hours=1)
        Case.objects.filter(pk=case.pk).update(created_at=start, finished_at=start + timedelta(seconds=seconds))

    cycle = metrics.cycle_time(now - timedelta(days=1))

    assert cycle["n"] == 5
    assert cycle["p50"] == pytest.approx(30)
    assert cycle["p95"] == pytest.approx(88)  # linear interpolation between 40 and 100, as percentile_cont does


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
    since = timezone.now() - timedelta(days=1)

    stp = metrics.straight_through(since)
    quality = metrics.quality(since)

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

    sla = metrics.sla(now + timedelta(seconds=1), now - timedelta(days=1))

    assert (sla["on_time"], sla["resolved"], sla["compliance"]) == (1, 2, 0.5)
    assert sla["breaches"]["today"] == 1 and sla["open_breached"] == 1


def test_the_agent_table_shows_time_tokens_and_money_per_agent(claim_generator):
    from datetime import timedelta
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

    rows = {r["agent"]: r for r in metrics.agents(timezone.now() - timedelta(days=1))}

    letters = rows["claims.communication"]
    assert (letters["tokens"], letters["cost"]) == (1500, Decimal("0.004500"))
    assert letters["avg_ms"] is not None and rows["claims.intake"]["tokens"] == 0
