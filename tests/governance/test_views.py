"""The portal governance page, the stop banner, and the admin: changes go through services, only for governance
admins."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from governance.models import AgentPolicy, HumanJudgement, PolicyVersion, StopSwitch
from governance.services import policy_publish, stop_engage

pytestmark = pytest.mark.django_db
RULE = {
    "id": "theft_cap",
    "expression": 'proposal.amount <= 2500.0 || case.payload.claim_type != "home_theft"',
    "reason_code": "theft_over_2500",
    "message": "Theft claims above 2,500 need a handler",
}


@pytest.fixture
def reader(client):
    user = get_user_model().objects.create_user("reader", password="x" * 12)
    client.force_login(user)
    return client


@pytest.fixture
def gov_admin(client):
    user = get_user_model().objects.create_user("gov", password="x" * 12, is_staff=True)
    user.groups.add(Group.objects.get_or_create(name="Governance admin")[0])
    client.force_login(user)
    return client


def test_the_governance_page_lists_agents_read_only_for_others(claims_workflow, reader):
    response = reader.get("/governance/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "claims.approval" in body and "bounded" in body
    assert 'action="/governance/stop"' not in body  # no buttons
    assert reader.post("/governance/stop", {"scope": "global", "reason": "x", "engage": "on"}).status_code == 403
    assert reader.get("/governance/backtest/").status_code == 403
    assert not StopSwitch.objects.exists()


def test_an_admin_stops_an_agent_from_the_portal_and_every_page_shows_the_banner(claims_workflow, gov_admin):
    body = gov_admin.get("/governance/").content.decode()
    assert 'action="/governance/stop"' in body
    # a reason is required
    gov_admin.post("/governance/stop", {"scope": "agent", "target": "claims.payment", "reason": "", "engage": "on"})
    assert not StopSwitch.objects.filter(engaged=True).exists()
    response = gov_admin.post(
        "/governance/stop", {"scope": "agent", "target": "claims.payment", "reason": "bank incident", "engage": "on"}
    )
    assert response.status_code == 302
    assert StopSwitch.objects.get(scope="agent", target="claims.payment").engaged
    event = AuditEvent.objects.get(action=AuditAction.STOP_ENGAGED)
    assert event.actor_label == "gov" and event.data["reason"] == "bank incident"
    for url in ("/", "/cases/", "/escalations/", "/governance/"):
        page = gov_admin.get(url).content.decode()
        assert "Stop switch engaged" in page and "bank incident" in page, url
    # released: the banner goes
    gov_admin.post("/governance/stop", {"scope": "agent", "target": "claims.payment", "reason": "fixed"})
    assert "Stop switch engaged" not in gov_admin.get("/").content.decode()


def test_the_portal_refuses_a_post_without_csrf(claims_workflow):
    from django.test import Client

    user = get_user_model().objects.create_user("gov2", password="x" * 12)
    user.groups.add(Group.objects.get_or_create(name="Governance admin")[0])
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post("/governance/stop", {"scope": "global", "reason": "x", "engage": "on"}).status_code == 403


def test_promote_button_for_an_eligible_agent(gov_admin, settings):
    settings.SELFOPS_GOVERNANCE = {**settings.SELFOPS_GOVERNANCE, "PROMOTE_MIN_DECISIONS": 20}
    policy_publish(agent_key="a.shadow", actor=Actor.system("t"), autonomy="shadow")
    HumanJudgement.objects.bulk_create(
        HumanJudgement(
            agent_key="a.shadow",
            autonomy="shadow",
            source="shadow",
            subject=f"t:{i}",
            agreed=True,
            decided_by="t",
            decided_at=timezone.now(),
        )
        for i in range(30)
    )
    assert "eligible" in gov_admin.get("/governance/").content.decode()
    gov_admin.post("/governance/agents/a.shadow/promote")
    assert AgentPolicy.objects.get(agent_key="a.shadow").current_version.autonomy == "supervised"


def test_the_backtest_page_runs_a_draft(claim_generator, gov_admin):
    from operations import engine
    from tests.helpers import submit

    for scenario in ("straight_through", "over_limit"):
        engine.advance_case(submit(claim_generator.claim(scenario)).pk)
    now = timezone.now()
    form = gov_admin.get("/governance/backtest/?agent=claims.approval")
    assert form.status_code == 200 and "5000" in form.content.decode()
    response = gov_admin.get(
        "/governance/backtest/",
        {
            "agent_key": "claims.approval",
            "since": (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
            "until": (now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
            "autonomy": "bounded",
            "allowed_actions": "approve, deny",
            "max_amount": "1",
            "rules": "",
        },
    )
    body = response.content.decode()
    assert response.status_code == 200 and "2 recorded proposals" in body
    assert '<dd id="allow-to-escalate">1 (' in body


def test_admin_publishes_through_the_service_and_a_bad_expression_is_a_form_error(claims_workflow, gov_admin):
    policy = AgentPolicy.objects.get(agent_key="claims.approval")
    url = f"/admin/governance/agentpolicy/{policy.pk}/change/"
    assert gov_admin.get(url).status_code == 200
    data = {
        "name": "Approval",
        "note": "theft cap",
        "autonomy": "bounded",
        "allowed_actions": "approve, deny",
        "max_amount": "5000",
        "min_confidence": "0.7",
        "daily_amount_budget": "",
        "hourly_decision_limit": "",
        "qa_sample_rate": "0.05",
        "rules": json.dumps([{**RULE, "expression": "proposal.amout <= 1.0"}]),
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
    }
    response = gov_admin.post(url, data)
    assert response.status_code == 200 and "unknown field" in response.content.decode()
    assert PolicyVersion.objects.filter(policy=policy).count() == 1
    response = gov_admin.post(url, {**data, "rules": json.dumps([RULE])})
    assert response.status_code == 302, response.content.decode()[:2000]
    policy.refresh_from_db()
    assert policy.current_version.number == 2 and policy.current_version.rules == [RULE]
    assert policy.current_version.qa_sample_rate == Decimal("0.05") and policy.current_version.created_by == "gov"
    assert AuditEvent.objects.filter(action=AuditAction.POLICY_CHANGED, subject_id=str(policy.pk)).count() == 2


def test_admin_stop_switch_add_and_bulk_release_go_through_services(gov_admin):
    response = gov_admin.post(
        "/admin/governance/stopswitch/add/", {"scope": "global", "target": "", "engaged": "on", "reason": "drill"}
    )
    assert response.status_code == 302
    switch = StopSwitch.objects.get(scope="global")
    assert switch.engaged and switch.changed_by == "gov"
    changelist = "/admin/governance/stopswitch/"
    asked = gov_admin.post(changelist, {"action": "release_selected", "_selected_action": [switch.pk]})
    assert asked.status_code == 200 and "reason" in asked.content.decode()
    gov_admin.post(changelist, {"action": "release_selected", "_selected_action": [switch.pk], "reason": "drill over"})
    switch.refresh_from_db()
    assert not switch.engaged and switch.reason == "drill over"
    assert AuditEvent.objects.filter(action=AuditAction.STOP_RELEASED).count() == 1


def test_staff_outside_the_group_cannot_change_policies_in_the_admin(claims_workflow, client):
    user = get_user_model().objects.create_user("staff", password="x" * 12, is_staff=True)
    client.force_login(user)
    policy = AgentPolicy.objects.get(agent_key="claims.approval")
    response = client.post(f"/admin/governance/agentpolicy/{policy.pk}/change/", {"name": "x"})
    assert response.status_code == 403
    stop_engage(scope="global", reason="x", actor=Actor.system("t"))
    assert client.post("/admin/governance/stopswitch/add/", {"scope": "global", "reason": "y"}).status_code == 403
