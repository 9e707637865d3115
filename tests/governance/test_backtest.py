from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from audit.actors import Actor
from governance.backtest import backtest
from operations.models import Step, StepRun
from operations.services import case_submit, workflow_install

pytestmark = pytest.mark.django_db
admin = Actor.system("test")


def _recorded(rows):
    workflow_install(
        definition={
            "key": "bt",
            "name": "bt",
            "payload_schema": {"type": "object"},
            "steps": [{"key": "only", "name": "Only", "agent_key": "bt.agent", "transitions": {"ok": "@complete"}}],
        },
        actor=admin,
    )
    step = Step.objects.get(workflow__key="bt")
    now = timezone.now()
    for i, (claim_type, amount, confidence, decision, hours_ago) in enumerate(rows):
        case = case_submit(workflow_key="bt", reference=f"BT-{i}", payload={"claim_type": claim_type}, actor=admin)
        StepRun.objects.create(
            case=case,
            step=step,
            attempt=1,
            status="succeeded" if decision == "allow" else "escalated",
            agent_key="bt.agent",
            proposal={"outcome": "ok", "action": "approve", "amount": amount, "confidence": confidence},
            verdict={"decision": decision, "reasons": [] if decision == "allow" else [{"code": "x", "message": "m"}]},
            started_at=now - timedelta(hours=hours_ago),
            finished_at=now - timedelta(hours=hours_ago),
        )
    return now


def test_backtest_counts_flips_and_amounts_as_computed_by_hand():
    # given six recorded proposals, the last one outside the period
    now = _recorded(
        [
            ("glass", "100.00", 0.9, "allow", 1),  # stays allowed
            ("glass", "2000.00", 0.9, "allow", 2),  # over the draft's 1,000 limit: allow -> escalate
            ("glass", "3000.00", 0.9, "escalate", 3),  # stays escalated
            ("glass", "500.00", 0.5, "escalate", 4),  # confidence 0.5 passes the draft's 0.4: escalate -> allow
            ("theft", "800.00", 0.9, "allow", 5),  # the theft rule caps at 500: allow -> escalate
            ("glass", "9999.00", 0.9, "allow", 50),  # before the period
        ]
    )
    draft = {
        "autonomy": "bounded",
        "allowed_actions": ["approve"],
        "max_amount": "1000",
        "min_confidence": "0.4",
        "rules": [
            {
                "id": "theft",
                "expression": 'case.payload.claim_type != "theft" || proposal.amount <= 500.0',
                "reason_code": "theft_cap",
                "message": "theft over 500",
            }
        ],
    }
    # when the draft is replayed over the last day
    report = backtest(draft, "bt.agent", now - timedelta(hours=24), now)
    # then the counts and amounts are the hand-computed ones
    assert report.proposals == 5
    assert (report.allowed_before, report.allowed_after) == (3, 2)
    assert (report.allow_to_escalate, report.amount_allow_to_escalate) == (2, Decimal("2800.00"))
    assert (report.escalate_to_allow, report.amount_escalate_to_allow) == (1, Decimal("500.00"))
    assert report.reasons_after == {"amount_over_limit": 2, "theft_cap": 1}
    assert sorted(s["reference"] for s in report.samples_allow_to_escalate) == ["BT-1", "BT-4"]
    assert [s["reference"] for s in report.samples_escalate_to_allow] == ["BT-3"]


def test_backtest_refuses_a_draft_with_bad_rules():
    with pytest.raises(ValueError, match="syntax error"):
        backtest(
            {"rules": [{"id": "x", "expression": "1 +", "reason_code": "x", "message": "m"}]},
            "bt.agent",
            timezone.now(),
            timezone.now(),
        )


def test_backtest_judges_each_proposal_of_a_case_on_its_own_values():
    # given one case with three recorded proposals (the case is converted for the rules once, the proposals differ)
    workflow_install(
        definition={
            "key": "bt2",
            "name": "bt2",
            "payload_schema": {"type": "object"},
            "steps": [{"key": "only", "name": "Only", "agent_key": "bt.agent", "transitions": {"ok": "@complete"}}],
        },
        actor=admin,
    )
    step = Step.objects.get(workflow__key="bt2")
    case = case_submit(workflow_key="bt2", reference="BT2", payload={"claim_type": "theft"}, actor=admin)
    now = timezone.now()
    for i, (amount, flag, decision) in enumerate(
        [("400.00", "ok", "allow"), ("600.00", "ok", "allow"), (None, "x", "allow")]
    ):
        StepRun.objects.create(
            case=case,
            step=step,
            attempt=i + 1,
            status="succeeded",
            agent_key="bt.agent",
            proposal={
                "outcome": "ok",
                "action": "approve",
                "amount": amount,
                "confidence": 0.9,
                "data": {"flag": flag},
            },
            verdict={"decision": decision, "reasons": []},
            started_at=now - timedelta(minutes=i + 1),
            finished_at=now,
        )
    draft = {
        "rules": [
            {
                "id": "theft",
                "expression": 'case.payload.claim_type != "theft" || proposal.amount == null '
                "|| proposal.amount <= 500.0",
                "reason_code": "theft_cap",
                "message": "theft over 500",
            },
            {"id": "flag", "expression": 'proposal.data.flag == "ok"', "reason_code": "flagged", "message": "flagged"},
        ]
    }
    # when the draft is replayed
    report = backtest(draft, "bt.agent", now - timedelta(hours=1), now)
    # then the 600 proposal trips the cap, the one without an amount trips only the flag rule, the 400 one passes
    assert (report.proposals, report.allowed_after, report.allow_to_escalate) == (3, 1, 2)
    assert report.reasons_after == {"theft_cap": 1, "flagged": 1}
    assert report.amount_allow_to_escalate == Decimal("600.00")
