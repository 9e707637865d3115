"""Agent versions: canary routing by case id, replay on closed cases, promote and rollback."""

from decimal import Decimal
from types import SimpleNamespace

import pytest
from scipy.stats import binomtest

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.agents import versions
from operations.agents.rules import rule_agent_save
from operations.errors import Conflict
from operations.models import AgentVersion, AgentVersionStatus, Case, Escalation, StepRun
from operations.services import escalation_resolve
from tests.helpers import END_STATE, senior_user, settle, submit

ADMIN = Actor.system("test-admin")


def test_canary_bucket_is_deterministic_and_sends_the_configured_share():
    # given 2000 case ids and a 10% canary
    share, n = 0.10, 2000
    buckets = [versions.canary_bucket("claims.assessment", i) for i in range(1, n + 1)]
    # then the same case always lands in the same bucket
    assert buckets == [versions.canary_bucket("claims.assessment", i) for i in range(1, n + 1)]
    # and the number sent to the canary is consistent with Binomial(2000, 0.1)
    hits = sum(b < share for b in buckets)
    assert binomtest(hits, n, share).pvalue > 0.001, hits
    assert 150 < hits < 250


@pytest.mark.django_db
def test_resolve_routes_the_canary_share_to_the_canary_and_the_rest_to_live():
    # given a live and a 25% canary version of one agent
    AgentVersion.objects.create(agent_key="claims.intake", version="1", kind="code", status="live")
    AgentVersion.objects.create(
        agent_key="claims.intake", version="2", kind="code", status="canary", canary_share=Decimal("0.25")
    )
    # when 2000 cases resolve the agent
    chosen = [versions.resolve("claims.intake", SimpleNamespace(pk=i)).version for i in range(1, 2001)]
    # then about a quarter meet version 2, always the same cases
    hits = chosen.count("2")
    assert binomtest(hits, 2000, 0.25).pvalue > 0.001, hits
    assert chosen[:50] == [versions.resolve("claims.intake", SimpleNamespace(pk=i)).version for i in range(1, 51)]


@pytest.mark.django_db
def test_without_versions_the_registered_agent_runs_as_before():
    resolved = versions.resolve("claims.intake", SimpleNamespace(pk=1))
    assert (resolved.version, resolved.kind) == ("1", "code")
    assert versions.resolve("no.such.agent", SimpleNamespace(pk=1)) is None


def test_a_canary_ml_version_runs_the_step_and_is_recorded_on_the_step_run(claim_generator):
    # given the ML assessment as a 100% canary of claims.assessment
    versions.agent_version_register(
        agent_key="claims.assessment", version="ml-1", kind="ml", source="claims.assessment_ml", actor=ADMIN
    )
    AgentVersion.objects.filter(version="ml-1").update(replay={"cases": 0})
    versions.agent_version_start_canary(agent_key="claims.assessment", version="ml-1", share=Decimal(1), actor=ADMIN)
    # when a claim runs
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    # then its assessment was made by the ML version, and the step run says so
    run = StepRun.objects.filter(case=case, step__key="assessment").first()
    assert run.agent_version == "ml-1"
    assert run.proposal["data"]["assessment_model"] == "default"
    assert 0 <= run.proposal["confidence"] <= 1
    assert StepRun.objects.filter(case=case, step__key="intake").first().agent_version == "1"


def test_promote_and_rollback_are_one_call_each_and_audited(claims_workflow):
    rule_agent_save(
        agent_key="claims.intake",
        version="r1",
        rules=[{"when": "true", "outcome": "accepted", "action": "accept", "confidence": 0.99}],
        actor=ADMIN,
    )
    with pytest.raises(Conflict, match="not been replayed"):
        versions.agent_version_start_canary(agent_key="claims.intake", version="r1", share=Decimal("0.1"), actor=ADMIN)
    versions.agent_replay(agent_key="claims.intake", version="r1", last=10, actor=ADMIN)
    versions.agent_version_start_canary(agent_key="claims.intake", version="r1", share=Decimal("0.1"), actor=ADMIN)
    versions.agent_version_promote(agent_key="claims.intake", version="r1", actor=ADMIN)
    row = AgentVersion.objects.get(agent_key="claims.intake", version="r1")
    assert (row.status, row.canary_share) == (AgentVersionStatus.LIVE, 0)
    assert versions.resolve("claims.intake", SimpleNamespace(pk=7)).version == "r1"
    versions.agent_version_rollback(agent_key="claims.intake", version="r1", actor=ADMIN, note="bad letters")
    assert versions.resolve("claims.intake", SimpleNamespace(pk=7)).version == "1"
    changes = AuditEvent.objects.filter(action=AuditAction.AGENT_VERSION_CHANGED).order_by("id")
    assert [(e.data["from"], e.data["to"]) for e in changes] == [
        ("replaying", "canary"),
        ("canary", "live"),
        ("live", "retired"),
    ]
    assert AuditEvent.objects.filter(action=AuditAction.AGENT_REPLAYED).count() == 1


def _collision_claims(claim_generator, amounts):
    claims = []
    while len(claims) < len(amounts):
        claim = claim_generator.claim("straight_through")
        if claim.payload["claim_type"] == "auto_collision" and not claim.payload["other_party"]:
            claim.payload["amount_claimed"] = amounts[len(claims)]
            claims.append(claim)
    return claims


def test_replay_numbers_match_a_hand_checked_case_set(claim_generator):
    # given three collision claims (deductible 500) that went straight through: assessed at claimed - 500
    claims = _collision_claims(claim_generator, ["1234.00", "2345.00", "3456.00"])
    cases = [submit(c) for c in claims]
    # and one travel claim far above the typical range, whose low-confidence assessment a person amended to 400
    odd = submit(claim_generator.claim("low_confidence"))
    settle(*[c.pk for c in cases], odd.pk)
    esc = Escalation.objects.get(case=odd)
    assert esc.step.key == "assessment"
    user = senior_user("handler")
    escalation_resolve(escalation_id=esc.pk, actor=Actor.user(user), resolution="amend", amount="400", note="receipts")
    settle(odd.pk)
    assert [END_STATE[Case.objects.get(pk=c.pk).status] for c in cases + [odd]] == ["completed"] * 4
    # when a rule version that under-assesses collisions by 34 and says 500 (confidence 0.6) otherwise is replayed
    rule_agent_save(
        agent_key="claims.assessment",
        version="r1",
        rules=[
            {
                "when": "payload.claim_type == 'auto_collision'",
                "outcome": "assessed",
                "action": "estimate",
                "amount": "double(payload.amount_claimed) - double(context.deductible) - 34.0",
                "confidence": 0.9,
            },
            {"when": "true", "outcome": "assessed", "action": "estimate", "amount": "500", "confidence": 0.6},
        ],
        actor=ADMIN,
    )
    result = versions.agent_replay(agent_key="claims.assessment", version="r1", last=10, actor=ADMIN)
    # then, by hand: 4 cases, all agree on the outcome; errors 34, 34, 34 and |500 - 400| = 100 -> mean 50.50;
    # the 0.6 confidence is under the policy's 0.70 minimum once; one final decision was a person's
    assert result["cases"] == 4
    assert (result["agreed"], result["agreement"], result["errors"]) == (4, 1.0, 0)
    assert (result["amount_compared"], result["mean_abs_amount_error"]) == (4, "50.50")
    assert (result["would_escalate"], result["human_decided"]) == (1, 1)
    by_ref = {r["reference"]: r for r in result["rows"]}
    assert by_ref[odd.reference]["final_amount"] == "400.00"
    assert by_ref[cases[0].reference]["amount"] == "700.00"
    assert AgentVersion.objects.get(version="r1").status == AgentVersionStatus.REPLAYING


def test_agent_replay_command_prints_the_comparison(claim_generator, capsys):
    from django.core.management import call_command

    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    versions.agent_version_register(agent_key="claims.intake", version="1", kind="code", actor=ADMIN)
    call_command("agent_replay", "claims.intake", "1", "--last", "5")
    out = capsys.readouterr().out
    assert "cases: 1" in out and "agreement: 1.0" in out and "would_escalate: 0" in out
    # a version whose code is not deployed here is reported as failing on every case, not as a crash
    versions.agent_version_register(agent_key="claims.intake", version="9", kind="code", actor=ADMIN)
    call_command("agent_replay", "claims.intake", "9", "--last", "5")
    out = capsys.readouterr().out
    assert "errors: 1" in out and "agreement: 0.0" in out


def test_live_agreement_compares_proposals_with_final_decisions_on_closed_cases(claim_generator):
    # given one claim approved by the agent and one whose approval a person overturned (over the authority limit)
    ok = submit(_collision_claims(claim_generator, ["2345.00"])[0])
    big = submit(claim_generator.claim("over_limit"))
    settle(ok.pk, big.pk)
    esc = Escalation.objects.get(case=big)
    assert (esc.step.key, esc.reason) == ("approval", "amount_over_limit")
    user = senior_user("senior")
    escalation_resolve(escalation_id=esc.pk, actor=Actor.user(user), resolution="reject", note="not our loss")
    settle(big.pk)
    # then the approval agent's live record: two closed cases, one agreement (approve vs the person's deny)
    stats = versions.live_agreement("claims.approval", "1")
    assert (stats["steps"], stats["escalated"], stats["closed"], stats["agreed"], stats["agreement"]) == (
        2,
        1,
        2,
        1,
        0.5,
    )
