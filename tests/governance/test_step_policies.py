"""A policy narrowed to one workflow step: it applies at that step instead of the agent's general policy, verdicts say
which one they used, and a step never switches version midway."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from governance.errors import GovernanceError
from governance.models import AgentPolicy
from governance.selectors import policy_for_agent
from governance.services import policy_publish
from operations import engine
from operations.agents import Proposal, agent
from operations.models import Case, CaseStatus, StepRun, StepRunStatus
from operations.services import case_submit, workflow_install

pytestmark = pytest.mark.django_db
admin = Actor.system("test-admin")
_during_call: list = []  # callables the agent runs while it is deciding (once each)


@agent("test.narrow")
def narrow_agent(ctx):
    while _during_call:
        _during_call.pop(0)()
    return Proposal(outcome="ok", action="pay", amount=Decimal("300.00"), confidence=0.9)


def _workflow(key: str) -> None:
    workflow_install(
        definition={
            "key": key,
            "name": key,
            "payload_schema": {"type": "object"},
            "steps": [
                {"key": "a", "name": "A", "agent_key": "test.narrow", "transitions": {"ok": "b"}},
                {"key": "b", "name": "B", "agent_key": "test.narrow", "transitions": {"ok": "@complete"}},
            ],
        },
        actor=admin,
    )


def _run(workflow_key: str, reference: str) -> dict[str, StepRun]:
    case = case_submit(workflow_key=workflow_key, reference=reference, payload={}, actor=admin)
    engine.advance_case(case.pk)
    return {r.step.key: r for r in StepRun.objects.filter(case=case).select_related("step")}


@pytest.fixture
def two_workflows():
    _during_call.clear()
    _workflow("narrow")
    _workflow("other")
    policy_publish(agent_key="test.narrow", actor=admin, max_amount=Decimal("1000"))
    yield
    _during_call.clear()


def test_the_policy_narrowed_to_a_step_wins_there_and_the_general_one_applies_elsewhere(two_workflows):
    # given the agent's general limit of 1,000 and a limit of 100 narrowed to step b of workflow "narrow"
    policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="b", actor=admin, max_amount=Decimal(100))

    # when a case of "narrow" and one of "other" (same agent, same step key) run
    narrow = _run("narrow", "N-1")
    other = _run("other", "O-1")

    # then step a of "narrow" used the general policy, step b its narrowed one (and escalated, saying which)
    assert (narrow["a"].status, narrow["a"].verdict["policy_scope"]) == (StepRunStatus.SUCCEEDED, "")
    assert narrow["b"].status == StepRunStatus.ESCALATED
    assert (narrow["b"].policy_version, narrow["b"].verdict["policy_scope"]) == (1, "narrow/b")
    assert narrow["b"].verdict["reasons"][0]["code"] == "amount_over_limit"
    assert "of step narrow/b" in narrow["b"].verdict["reasons"][0]["message"]
    # and the narrowing is to that workflow's step only: the other workflow's step b used the general policy
    assert [other[k].status for k in "ab"] == [StepRunStatus.SUCCEEDED] * 2
    assert {other[k].verdict["policy_scope"] for k in "ab"} == {""}
    assert policy_for_agent("test.narrow", workflow_key="narrow", step_key="b").max_amount == 100
    assert policy_for_agent("test.narrow", workflow_key="other", step_key="b").max_amount == 1000


def test_a_step_never_switches_version_midway_even_when_both_policies_change_while_it_decides(two_workflows):
    # given a narrowed v1 for step a that allows 300
    policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="a", actor=admin, max_amount=Decimal(500))

    # when, while the agent is deciding step a, an admin publishes stricter versions of both policies (limit 100)
    def tighten():
        policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="a", actor=admin, max_amount=100)
        policy_publish(agent_key="test.narrow", actor=admin, max_amount=Decimal(100))

    _during_call.append(tighten)
    first = _run("narrow", "N-1")

    # then step a was judged by the version it started with, and step b (same task) by the general v1
    assert (first["a"].status, first["a"].policy_version, first["a"].verdict["policy_scope"]) == (
        StepRunStatus.SUCCEEDED,
        1,
        "narrow/a",
    )
    assert (first["b"].status, first["b"].policy_version, first["b"].verdict["policy_scope"]) == (
        StepRunStatus.SUCCEEDED,
        1,
        "",
    )
    assert Case.objects.get(reference="N-1").status == CaseStatus.COMPLETED
    # and the next case uses the new narrowed version v2 at step a
    second = _run("narrow", "N-2")
    assert (second["a"].status, second["a"].policy_version, second["a"].verdict["policy_scope"]) == (
        StepRunStatus.ESCALATED,
        2,
        "narrow/a",
    )


def test_a_narrowed_policy_must_name_a_step_this_agent_runs(two_workflows):
    with pytest.raises(GovernanceError, match="names both"):
        policy_publish(agent_key="test.narrow", workflow_key="narrow", actor=admin)
    with pytest.raises(GovernanceError, match="no installed workflow"):
        policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="zz", actor=admin)
    with pytest.raises(GovernanceError, match="no installed workflow"):
        policy_publish(agent_key="claims.intake", workflow_key="narrow", step_key="a", actor=admin)
    assert not AgentPolicy.objects.exclude(step_key="").exists()


def test_publishing_a_narrowed_policy_is_versioned_and_audited_with_its_scope(two_workflows):
    v1 = policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="b", actor=admin, max_amount=10)
    v2 = policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="b", actor=admin, max_amount=20)
    general = AgentPolicy.objects.get(agent_key="test.narrow", step_key="")
    assert (v1.number, v2.number, v1.policy_id == v2.policy_id != general.pk) == (1, 2, True)
    scopes = list(
        AuditEvent.objects.filter(action=AuditAction.POLICY_CHANGED)
        .order_by("id")
        .values_list("data__scope", flat=True)
    )
    assert scopes == ["", "narrow/b", "narrow/b"]


def test_admin_portal_and_api_show_the_scope(two_workflows, client):
    # given a governance admin and a policy narrowed to narrow/b, added from the admin
    user = get_user_model().objects.create_user("gov", password="x" * 12, is_staff=True)
    user.groups.add(Group.objects.get_or_create(name="Governance admin")[0])
    client.force_login(user)
    form = {"agent_key": "test.narrow", "workflow_key": "narrow", "step_key": "b", "name": "", "note": "tighter"}
    form |= {"autonomy": "bounded", "max_amount": "50", "qa_sample_rate": "0", "rules": "[]", "allowed_actions": ""}
    form |= {"versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0"}
    added = client.post("/admin/governance/agentpolicy/add/", form)
    bad = client.post("/admin/governance/agentpolicy/add/", {**form, "step_key": "nope"})

    # then it is published, a step the agent does not run is a form error, and every surface shows the scope
    assert added.status_code == 302, added.content.decode()[:2000]
    assert policy_for_agent("test.narrow", workflow_key="narrow", step_key="b").max_amount == 50
    assert bad.status_code == 200 and "not a step of this agent" in bad.content.decode()
    assert "only at step narrow/b" in client.get("/admin/governance/agentpolicy/").content.decode()
    page = client.get("/governance/").content.decode()
    assert "only at step <code>narrow/b</code>" in page and "all steps" in page


def test_demotion_demotes_every_bounded_policy_of_the_agent_including_narrowed_ones(two_workflows, settings):
    from django.utils import timezone

    from governance.models import HumanJudgement
    from governance.services import demotion_check

    settings.SELFOPS_GOVERNANCE = {
        **settings.SELFOPS_GOVERNANCE,
        "DEMOTE_MIN_DECISIONS": 4,
        "DEMOTE_OVERRIDE_RATE": 0.3,
        "DEMOTE_WINDOW_HOURS": 24,
    }
    # given a narrowed bounded policy at narrow/b and one in shadow at narrow/a, beside the general bounded one
    policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="b", actor=admin, max_amount=500)
    policy_publish(agent_key="test.narrow", workflow_key="narrow", step_key="a", actor=admin, autonomy="shadow")
    # when humans overrode 2 of its last 4 decisions
    HumanJudgement.objects.bulk_create(
        HumanJudgement(
            agent_key="test.narrow",
            autonomy="bounded",
            source="qa",
            subject=f"t:{i}",
            agreed=i < 2,
            decided_by="t",
            decided_at=timezone.now(),
        )
        for i in range(4)
    )
    demotion_check(agent_key="test.narrow")
    # then both bounded policies are supervised now (the narrowed one keeps its limit); shadow stays shadow
    assert policy_for_agent("test.narrow").autonomy == "supervised"
    narrowed_b = policy_for_agent("test.narrow", workflow_key="narrow", step_key="b")
    assert (narrowed_b.autonomy, narrowed_b.max_amount, narrowed_b.version) == ("supervised", 500, 2)
    assert policy_for_agent("test.narrow", workflow_key="narrow", step_key="a").autonomy == "shadow"
    scopes = AuditEvent.objects.filter(action=AuditAction.POLICY_DEMOTED).values_list("data__scope", flat=True)
    assert sorted(scopes) == ["", "narrow/b"]
