"""Governance services: publishing (validated, versioned, audited), budgets and rates (atomic), QA, agreement,
promotion and demotion."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import close_old_connections, connection
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from governance.errors import GovernanceError
from governance.evaluation import PolicySnapshot, Verdict
from governance.models import AgentPolicy, BudgetPeriod, BudgetUsage, HumanJudgement, QAReview
from governance.selectors import agent_standing, policy_for_agent, wilson_interval
from governance.services import (
    budget_consume,
    policy_promote,
    policy_publish,
    qa_review_decide,
    qa_sampled,
)
from operations import engine
from operations.agents import Proposal
from operations.models import CaseStatus, Escalation, EscalationStatus, StepRun
from operations.services import escalation_resolve
from tests.helpers import senior_user, submit

pytestmark = pytest.mark.django_db
admin = Actor.system("test-admin")
RULE = {
    "id": "theft_cap",
    "expression": 'proposal.amount <= 2500.0 || case.payload.claim_type != "home_theft"',
    "reason_code": "theft_over_2500",
    "message": "Theft claims above 2,500 need a handler",
}


@pytest.fixture
def human(db, settings):
    # one senior decides alone here; four-eyes has its own tests in tests/portal
    settings.SELFOPS = {**settings.SELFOPS, "FOUR_EYES_AMOUNT": "1000000", "SENIOR_APPROVAL_LIMIT": "1000000"}
    return Actor.user(senior_user("hana"))


# --- publishing -----------------------------------------------------------------------------------------------------


def test_publishing_validates_rules_and_saves_nothing_when_one_is_bad():
    bad = {**RULE, "expression": "proposal.amout <= 10.0"}
    with pytest.raises(GovernanceError) as err:
        policy_publish(agent_key="a.b", actor=admin, rules=[RULE, bad])
    assert "unknown field 'proposal.amout'" in err.value.fields["rules[1].expression"]
    assert not AgentPolicy.objects.filter(agent_key="a.b").exists()
    assert not AuditEvent.objects.filter(action=AuditAction.POLICY_CHANGED).exists()


def test_publishing_refuses_out_of_range_terms_as_a_governance_error():
    with pytest.raises(GovernanceError) as err:
        policy_publish(agent_key="a.b", actor=admin, min_confidence=Decimal("1.5"))
    assert "min_confidence" in err.value.fields or "__all__" in err.value.fields


def test_publishing_creates_a_new_version_and_the_snapshot_compiles_rules_once():
    policy_publish(agent_key="a.b", actor=admin, rules=[RULE])
    v2 = policy_publish(agent_key="a.b", actor=admin, rules=[RULE], max_amount=Decimal(10))
    snapshot = policy_for_agent("a.b")
    assert snapshot.version == v2.number == 2 and len(snapshot.compiled_rules) == 1
    assert policy_for_agent("a.b").compiled_rules[0] is snapshot.compiled_rules[0]  # cached per version


# --- budgets and rates ----------------------------------------------------------------------------------------------


def _snap(**terms):
    return PolicySnapshot(agent_key="claims.approval", version=1, **terms)


ALLOW = Verdict(decision="allow", policy_version=1)
NOON = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def test_daily_budget_is_consumed_up_to_the_cap_then_escalates_budget_exhausted():
    policy = _snap(daily_amount_budget=Decimal("1000"))
    taken = [
        budget_consume(policy=policy, proposal=Proposal(outcome="x", amount=Decimal(a)), verdict=ALLOW, now=NOON)
        for a in ("600", "400", "0.01")
    ]
    assert [v.decision for v in taken] == ["allow", "allow", "escalate"]
    assert taken[2].reasons[0].code == "budget_exhausted"
    assert taken[2].reasons[0].values == {"amount": "0.01", "budget": "1000", "used": "1000.00"}
    # a new UTC day starts afresh
    tomorrow = NOON + timedelta(days=1)
    again = budget_consume(
        policy=policy, proposal=Proposal(outcome="x", amount=Decimal(5)), verdict=ALLOW, now=tomorrow
    )
    assert again.allowed
    assert BudgetUsage.objects.filter(period=BudgetPeriod.DAY).count() == 2


def test_hourly_rate_counts_decisions_and_a_refusal_consumes_nothing_of_either_budget():
    policy = _snap(hourly_decision_limit=2, daily_amount_budget=Decimal("100"))
    p = Proposal(outcome="x", amount=Decimal(10))
    verdicts = [budget_consume(policy=policy, proposal=p, verdict=ALLOW, now=NOON) for _ in range(3)]
    assert [v.decision for v in verdicts] == ["allow", "allow", "escalate"]
    assert [r.code for r in verdicts[2].reasons] == ["rate_exceeded"]
    # the refused third decision took nothing of the day's amount
    assert BudgetUsage.objects.get(period=BudgetPeriod.DAY).used == Decimal(20)
    # both spent at once: both reasons
    big = Proposal(outcome="x", amount=Decimal(500))
    both = budget_consume(policy=policy, proposal=big, verdict=ALLOW, now=NOON)
    assert [r.code for r in both.reasons] == ["rate_exceeded", "budget_exhausted"]
    # the next hour has a fresh rate
    assert budget_consume(policy=policy, proposal=p, verdict=ALLOW, now=NOON + timedelta(hours=1)).allowed


def test_an_escalated_verdict_consumes_nothing():
    policy = _snap(daily_amount_budget=Decimal("100"), hourly_decision_limit=1)
    escalate = Verdict(decision="escalate", policy_version=1)
    assert (
        budget_consume(policy=policy, proposal=Proposal(outcome="x", amount=Decimal(50)), verdict=escalate) is escalate
    )
    assert not BudgetUsage.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_fifty_threads_deciding_near_the_cap_never_overspend():
    if connection.vendor != "postgresql":
        pytest.skip("row-lock concurrency is tested on PostgreSQL")
    # given a budget of 1,000 and 50 workers each wanting 30 (1,500 in all) at the same moment
    policy = _snap(daily_amount_budget=Decimal("1000"), hourly_decision_limit=40)
    barrier = threading.Barrier(50)
    results, errors = [], []

    def worker(i):
        from django.db import transaction

        try:
            barrier.wait(10)
            with transaction.atomic():
                p = Proposal(outcome="x", amount=Decimal(30))
                results.append(budget_consume(policy=policy, proposal=p, verdict=ALLOW, now=NOON).decision)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then exactly 33 got through (33 * 30 = 990), the cap held, and the rate row counts the same 33
    assert not errors
    assert results.count("allow") == 33 and results.count("escalate") == 17
    assert BudgetUsage.objects.get(period=BudgetPeriod.DAY).used == Decimal(990)
    assert BudgetUsage.objects.get(period=BudgetPeriod.HOUR).used == Decimal(33)


def test_the_engine_escalates_with_budget_exhausted_once_the_days_budget_is_spent(claim_generator):
    terms = {"allowed_actions": ["approve", "deny"], "max_amount": Decimal("5000"), "min_confidence": Decimal("0.70")}
    policy_publish(agent_key="claims.approval", actor=admin, daily_amount_budget=Decimal("100000"), **terms)
    first = submit(claim_generator.claim("straight_through"))
    engine.advance_case(first.pk)
    amount = Decimal(StepRun.objects.get(case=first, step__key="approval").proposal["amount"])
    assert BudgetUsage.objects.get(agent_key="claims.approval", period=BudgetPeriod.DAY).used == amount
    # given the day's budget now leaves one cent
    policy_publish(agent_key="claims.approval", actor=admin, daily_amount_budget=amount + Decimal("0.01"), **terms)
    # when the next claim reaches approval, it is escalated and consumes nothing
    second = submit(claim_generator.claim("straight_through"))
    engine.advance_case(second.pk)
    run = StepRun.objects.get(case=second, step__key="approval")
    assert run.status == "escalated" and run.verdict["reasons"][0]["code"] == "budget_exhausted"
    assert Escalation.objects.get(case=second).reason == "budget_exhausted"
    assert BudgetUsage.objects.get(agent_key="claims.approval", period=BudgetPeriod.DAY).used == amount


def test_a_human_approval_above_the_budget_is_allowed_consumed_and_recorded(claim_generator, human):
    # given an over-limit escalation of an agent whose daily budget is already spent
    policy_publish(
        agent_key="claims.approval",
        actor=admin,
        allowed_actions=["approve", "deny"],
        max_amount=Decimal("5000"),
        daily_amount_budget=Decimal("100"),
    )
    case = submit(claim_generator.claim("over_limit"))
    engine.advance_case(case.pk)
    escalation = Escalation.objects.get(case=case)
    # when a human approves it
    escalation_resolve(escalation_id=escalation.pk, actor=human, resolution="approve", note="checked the invoices")
    # then it went through, the budget shows the overrun and the audit says so
    case.refresh_from_db()
    assert case.status == CaseStatus.RUNNING and case.current_step.key == "payment"
    assert BudgetUsage.objects.get(agent_key="claims.approval", period="day").used == escalation.amount
    event = AuditEvent.objects.get(action=AuditAction.ESCALATION_RESOLVED, subject_id=str(escalation.pk))
    assert event.data["over_budget"] is True and event.data["budget"]["daily"] == "100.00"


# --- shadow, supervised, QA -----------------------------------------------------------------------------------------


def _publish_level(agent_key, autonomy, **terms):
    return policy_publish(agent_key=agent_key, actor=admin, autonomy=autonomy, **terms)


def test_shadow_agent_always_hands_over_and_agreement_is_stored_on_resolution(claim_generator, human):
    _publish_level("claims.intake", "shadow", allowed_actions=["accept", "request_information"])
    cases = [submit(claim_generator.claim("straight_through")) for _ in range(2)]
    for case in cases:
        engine.advance_case(case.pk)
    first, second = (Escalation.objects.get(case=c) for c in cases)
    assert first.reason == "shadow" and first.proposal["outcome"] == "accepted"
    # the human agrees with one and overrules the other
    escalation_resolve(escalation_id=first.pk, actor=human, resolution="approve", note="fine")
    escalation_resolve(escalation_id=second.pk, actor=human, resolution="reject", note="details missing")
    judgements = list(HumanJudgement.objects.order_by("id").values_list("source", "agreed", "subject"))
    assert judgements == [("shadow", True, f"escalation:{first.pk}"), ("shadow", False, f"escalation:{second.pk}")]
    assert AuditEvent.objects.get(action=AuditAction.ESCALATION_RESOLVED, subject_id=str(first.pk)).data[
        "agreed_with_agent"
    ]


def test_supervised_agent_waits_for_every_approval_and_an_amendment_is_an_override(claim_generator, human):
    _publish_level("claims.intake", "supervised", allowed_actions=["accept", "request_information"])
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    escalation = Escalation.objects.get(case=case)
    assert escalation.reason == "supervised"
    escalation_resolve(
        escalation_id=escalation.pk, actor=human, resolution="amend", outcome="incomplete", note="not complete"
    )
    assert list(HumanJudgement.objects.values_list("source", "agreed")) == [("supervised", False)]


def test_limit_escalations_of_bounded_agents_and_retries_are_not_judgements(claim_generator, human):
    case = submit(claim_generator.claim("over_limit"))
    engine.advance_case(case.pk)
    escalation = Escalation.objects.get(case=case)
    escalation_resolve(escalation_id=escalation.pk, actor=human, resolution="approve", note="ok")
    assert not HumanJudgement.objects.exists()


def test_qa_sampling_is_deterministic_and_close_to_the_rate():
    sampled = sum(qa_sampled(rate=Decimal("0.05"), case_id=i, step_key="approval") for i in range(20000))
    assert 850 < sampled < 1150
    assert qa_sampled(rate=Decimal(1), case_id=7, step_key="a") and not qa_sampled(
        rate=Decimal(0), case_id=7, step_key="a"
    )
    assert qa_sampled(rate=Decimal("0.5"), case_id=7, step_key="a") == qa_sampled(
        rate=Decimal("0.5"), case_id=7, step_key="a"
    )


def test_a_sampled_autonomous_decision_opens_a_qa_review_without_holding_the_case(claim_generator, human):
    _publish_level(
        "claims.approval", "bounded", allowed_actions=["approve", "deny"], max_amount=Decimal(5000), qa_sample_rate=1
    )
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    case.refresh_from_db()
    assert case.status == CaseStatus.COMPLETED  # not held
    review = QAReview.objects.get(case_id=case.pk)
    assert (review.agent_key, review.step_key, review.status) == ("claims.approval", "approval", "open")
    # when a human disagrees, it counts as an override; deciding twice is refused
    qa_review_decide(review_id=review.pk, agreed=False, note="should have asked for photos", actor=human)
    assert list(HumanJudgement.objects.values_list("source", "agreed")) == [("qa", False)]
    with pytest.raises(GovernanceError):
        qa_review_decide(review_id=review.pk, agreed=True, note="again", actor=human)
    with pytest.raises(GovernanceError):
        qa_review_decide(review_id=review.pk, agreed=True, note=" ", actor=human)


# --- promotion and demotion -----------------------------------------------------------------------------------------


def _judgements(agent_key, autonomy, agreed: int, overridden: int, *, at=None):
    at = at or timezone.now()
    rows = [True] * agreed + [False] * overridden
    HumanJudgement.objects.bulk_create(
        HumanJudgement(
            agent_key=agent_key,
            autonomy=autonomy,
            source={"bounded": "qa"}.get(autonomy, autonomy),
            subject=f"t:{agent_key}:{autonomy}:{i}:{at.timestamp()}",
            agreed=a,
            decided_by="t",
            decided_at=at,
        )
        for i, a in enumerate(rows)
    )


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(45, 50, 1.96)
    assert round(low, 4) == 0.7864 and round(high, 4) == 0.9565
    assert wilson_interval(0, 0, 1.96) == (0.0, 1.0)


def test_eligibility_needs_enough_decisions_and_a_lower_bound_above_the_threshold(settings):
    settings.SELFOPS_GOVERNANCE = {**settings.SELFOPS_GOVERNANCE, "PROMOTE_AGREEMENT": 0.8, "PROMOTE_MIN_DECISIONS": 20}
    _publish_level("a.shadow", "shadow")
    _judgements("a.shadow", "shadow", 19, 0)
    assert not agent_standing("a.shadow")["eligible"]  # 19 < 20 decisions
    _judgements("a.shadow", "shadow", 1, 0)
    standing = agent_standing("a.shadow")
    assert standing["decisions"] == 20 and standing["wilson_low"] > 0.8 and standing["eligible"]
    # 45 of 50 agreed is 90%, but the lower bound (78.6%) is under 80%: not yet
    _publish_level("b.shadow", "shadow")
    _judgements("b.shadow", "shadow", 45, 5)
    assert not agent_standing("b.shadow")["eligible"]
    assert "lower bound 79%" in agent_standing("b.shadow")["why"]


def test_promotion_is_one_step_up_as_a_new_audited_version_and_only_when_eligible(settings, human):
    settings.SELFOPS_GOVERNANCE = {**settings.SELFOPS_GOVERNANCE, "PROMOTE_MIN_DECISIONS": 20}
    _publish_level("a.shadow", "shadow", max_amount=Decimal(100))
    with pytest.raises(GovernanceError):
        policy_promote(agent_key="a.shadow", actor=human)
    _judgements("a.shadow", "shadow", 30, 0)
    version = policy_promote(agent_key="a.shadow", actor=human)
    assert (version.number, version.autonomy, version.max_amount) == (2, "supervised", Decimal(100))
    event = AuditEvent.objects.get(action=AuditAction.POLICY_PROMOTED)
    assert event.data["from"] == "shadow" and event.actor_label == "hana"
    # shadow evidence does not carry over: the supervised level starts afresh
    assert not agent_standing("a.shadow")["eligible"]


def test_too_many_overrides_in_the_window_demote_a_bounded_agent_and_notify_admins(
    settings, human, mailoutbox, django_capture_on_commit_callbacks
):
    settings.SELFOPS_GOVERNANCE = {
        **settings.SELFOPS_GOVERNANCE,
        "DEMOTE_MIN_DECISIONS": 10,
        "DEMOTE_OVERRIDE_RATE": 0.3,
        "DEMOTE_WINDOW_HOURS": 24,
    }
    admin_user = get_user_model().objects.create_user("gov", email="gov@example.com", password="x" * 12)
    admin_user.groups.add(Group.objects.create(name="Governance admin"))
    _publish_level("claims.approval", "bounded", allowed_actions=["approve", "deny"], qa_sample_rate=1)
    # old overrides outside the window do not count; 7 agreed + 2 overridden inside it are under the minimum
    _judgements("claims.approval", "bounded", 0, 20, at=timezone.now() - timedelta(hours=30))
    _judgements("claims.approval", "bounded", 7, 2)
    reviews = [
        QAReview.objects.create(agent_key="claims.approval", case_id=i, step_key="approval", proposal={})
        for i in range(2)
    ]
    # when one more override makes it 3 of 10 (30%, not above): still bounded
    qa_review_decide(review_id=reviews[0].pk, agreed=False, note="wrong", actor=human)
    assert policy_for_agent("claims.approval").autonomy == "bounded"
    # when the next makes it 4 of 11 (36%): demoted to supervised by the system, audited, admins told
    with django_capture_on_commit_callbacks(execute=True):
        qa_review_decide(review_id=reviews[1].pk, agreed=False, note="wrong again", actor=human)
    snapshot = policy_for_agent("claims.approval")
    assert snapshot.autonomy == "supervised" and snapshot.allowed_actions == ("approve", "deny")
    event = AuditEvent.objects.get(action=AuditAction.POLICY_DEMOTED)
    assert event.actor_label == "governance" and event.data["overrides"] == 4 and event.data["decisions"] == 11
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["gov@example.com"]
    assert "demoted to supervised" in mailoutbox[0].subject


def test_the_demo_shadow_investigator_proposes_and_an_investigator_decides(claim_generator, human):
    # given a fraud referral that special investigations sends on to investigation
    case = submit(claim_generator.claim("fraud_signals"))
    engine.advance_case(case.pk)
    referral = Escalation.objects.get(case=case, status=EscalationStatus.OPEN)
    assert referral.queue == "Special investigations" and referral.proposal["action"] == "refer"
    escalation_resolve(escalation_id=referral.pk, actor=human, resolution="approve", note="investigate")
    engine.advance_case(case.pk)
    # then the shadow agent proposed, and the case waits for an investigator
    shadow = Escalation.objects.get(case=case, status=EscalationStatus.OPEN)
    assert (shadow.step.key, shadow.reason, shadow.queue) == ("investigation", "shadow", "Special investigations")
    assert shadow.proposal["outcome"] == "fraud_confirmed"  # a reused document
    # when the investigator agrees, the agreement is recorded and the case ends with a denial letter
    escalation_resolve(escalation_id=shadow.pk, actor=human, resolution="approve", note="confirmed")
    engine.advance_case(case.pk)
    case.refresh_from_db()
    assert case.status == CaseStatus.REJECTED
    assert list(HumanJudgement.objects.values_list("agent_key", "source", "agreed")) == [
        ("claims.investigation", "shadow", True)
    ]
