import pytest

from audit.models import AuditAction, AuditEvent
from governance.models import StopSwitch
from tests.api.conftest import escalated_via

pytestmark = pytest.mark.django_db


def test_agents_and_their_current_policies_can_be_read(intake, claims_workflow):
    agents = intake.get("/api/v1/governance/agents/").json()
    key = agents[0]["agent_key"]

    one = intake.get(f"/api/v1/governance/agents/{key}/")
    missing = intake.get("/api/v1/governance/agents/no-such-agent/")

    assert one.status_code == 200 and one.json()["current_version"]["number"] >= 1
    assert missing.status_code == 404


def test_engage_and_release_a_stop_switch_audited_as_the_client(intake, claims_workflow):
    engaged = intake.post("/api/v1/governance/stops/engage/", {"scope": "workflow", "target": "claims", "reason": "r"})
    listed = intake.get("/api/v1/governance/stops/").json()
    released = intake.post(
        "/api/v1/governance/stops/release/", {"scope": "workflow", "target": "claims", "reason": "ok"}
    )

    assert engaged.status_code == 200 and engaged.json()["engaged"] is True
    assert [(s["scope"], s["target"], s["engaged"]) for s in listed] == [("workflow", "claims", True)]
    assert released.json()["engaged"] is False
    actions = list(AuditEvent.objects.filter(actor_type="api_client").values_list("action", flat=True))
    assert AuditAction.STOP_ENGAGED in actions and AuditAction.STOP_RELEASED in actions


def test_a_stop_without_reason_or_target_is_a_400_and_changes_nothing(intake, claims_workflow):
    no_reason = intake.post("/api/v1/governance/stops/engage/", {"scope": "global"})
    no_target = intake.post("/api/v1/governance/stops/engage/", {"scope": "agent", "reason": "r"})
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["fields"]
    assert no_target.status_code == 400 and "target" in no_target.json()["fields"]
    assert not StopSwitch.objects.exists()


def test_audit_events_by_subject(intake, claim_generator):
    escalation = escalated_via(intake, claim_generator)

    events = intake.get(
        "/api/v1/audit/events/", subject_type="operations.escalation", subject_id=str(escalation.pk)
    ).json()["results"]
    of_case = intake.get("/api/v1/audit/events/", case_id=escalation.case_id).json()["results"]

    assert [e["action"] for e in events] == ["escalation.opened"]
    assert {"case.submitted", "escalation.opened"} <= {e["action"] for e in of_case}


def test_a_policy_narrowed_to_a_step_is_listed_with_its_scope_and_the_detail_is_the_general_one(
    intake, claims_workflow
):
    from decimal import Decimal

    from audit.actors import Actor
    from governance.services import policy_publish

    policy_publish(
        agent_key="claims.approval",
        workflow_key="claims",
        step_key="approval",
        actor=Actor.system("test"),
        max_amount=Decimal(10),
    )

    agents = intake.get("/api/v1/governance/agents/").json()
    approval = [(a["workflow_key"], a["step_key"]) for a in agents if a["agent_key"] == "claims.approval"]
    one = intake.get("/api/v1/governance/agents/claims.approval/").json()

    assert approval == [("", ""), ("claims", "approval")]
    assert (one["step_key"], one["current_version"]["max_amount"]) == ("", "5000.00")
