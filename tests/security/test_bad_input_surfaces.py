"""Bad input on every surface that writes — the API's resolve route, the admin's forms and every management command —
is refused with a clear error and writes nothing (tests/security/test_bad_input.py covers case submission, the
portal's resolve form and evaluate())."""

import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from governance.models import AgentCostBudget, AgentPolicy, PolicyVersion
from operations import engine
from operations.models import ApiClient, Case, Escalation, EscalationStatus, LLMEndpoint, OutboxEntry, RuleAgentVersion
from tests.api.conftest import Caller
from tests.helpers import submit

pytestmark = pytest.mark.django_db


def _counts():
    return (
        Case.objects.count(),
        AuditEvent.objects.count(),
        OutboxEntry.objects.count(),
        ApiClient.objects.count(),
        PolicyVersion.objects.count(),
    )


# --- API: resolving an escalation, an oversize body ------------------------------------------------------------------


@pytest.fixture
def caller(db) -> Caller:
    from audit.actors import Actor
    from operations.api.clients import api_client_create
    from operations.models import ApiScope

    client, key = api_client_create(
        name="intake", scopes=list(ApiScope.values), queues=["Claims handlers"], actor=Actor.system("test")
    )
    return Caller(client, key)


@pytest.fixture
def api_escalation(claim_generator, caller):
    case = submit(claim_generator.claim("over_limit"))
    engine.advance_case(case.pk)
    return caller, Escalation.objects.get(case=case)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"resolution": "approve"}, "note"),
        ({"resolution": "pay-everyone", "note": "n"}, "resolution"),
        ({"resolution": ["approve"], "note": "n"}, "resolution"),
        ({"resolution": "amend", "note": "n", "outcome": "approve", "amount": "-1"}, "amount"),
        ({"resolution": "amend", "note": "n", "outcome": "approve", "amount": "1e20"}, "amount"),
        ({"resolution": "amend", "note": "n", "outcome": "approve", "amount": "lots"}, "amount"),
        ({"resolution": "amend", "note": "n", "outcome": "approve", "amount": {"v": 1}}, "amount"),
        ({"resolution": "amend", "note": "n", "outcome": "no-such-outcome", "amount": "10"}, "outcome"),
        ({"resolution": "approve", "note": "n" * 5000}, "note"),
    ],
)
def test_the_api_refuses_bad_resolutions_and_changes_nothing(api_escalation, body, field):
    caller, escalation = api_escalation
    before = _counts()

    response = caller.post(f"/api/v1/escalations/{escalation.pk}/resolve/", body)

    assert response.status_code == 400, response.json()
    assert field in response.json()["fields"] and response.json()["message"]
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.OPEN and not escalation.pending_approval
    assert _counts() == before


def test_the_api_refuses_an_oversize_body_before_parsing_it(claims_workflow, caller, settings):
    from operations.models import IdempotencyRecord

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    before = _counts()
    body = {"workflow": "claims", "reference": "BIG-1", "payload": {"notes": "x" * 10_000}}

    response = caller.post("/api/v1/cases/", body, **{"Idempotency-Key": "big-1"})

    assert response.status_code == 413, response.content[:300]
    assert response.json()["error"] == "too_large" and "at most 4,096 bytes" in response.json()["message"]
    assert _counts() == before and not IdempotencyRecord.objects.exists()


# --- admin ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def superuser_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-root"))
    return client


POLICY_FORM = {
    "name": "Approval",
    "note": "tightening",
    "autonomy": "bounded",
    "allowed_actions": "approve, deny",
    "max_amount": "5000",
    "min_confidence": "0.7",
    "daily_amount_budget": "",
    "hourly_decision_limit": "",
    "qa_sample_rate": "0.05",
    "rules": "",
    "versions-TOTAL_FORMS": "0",
    "versions-INITIAL_FORMS": "0",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_amount": "-5"}, "max_amount"),
        ({"max_amount": "1e20"}, "max_amount"),
        ({"min_confidence": "1.5"}, "min_confidence"),
        ({"daily_amount_budget": "-1"}, "daily_amount_budget"),
        ({"hourly_decision_limit": "-3"}, "hourly_decision_limit"),
        ({"autonomy": "god-mode"}, "autonomy"),
        ({"rules": json.dumps([{"id": "r", "expression": "proposal.amount <=", "reason_code": "x"}])}, "rules"),
        ({"rules": "[not json"}, "rules"),
    ],
)
def test_the_policy_admin_shows_a_form_error_and_publishes_nothing(claims_workflow, superuser_client, change, field):
    policy = AgentPolicy.objects.get(agent_key="claims.approval")
    before = _counts()

    response = superuser_client.post(f"/admin/governance/agentpolicy/{policy.pk}/change/", {**POLICY_FORM, **change})

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert _counts() == before


def test_the_policy_admin_publishes_good_terms(claims_workflow, superuser_client):
    # the control for the refusals above
    policy = AgentPolicy.objects.get(agent_key="claims.approval")
    response = superuser_client.post(f"/admin/governance/agentpolicy/{policy.pk}/change/", POLICY_FORM)
    assert response.status_code == 302
    assert PolicyVersion.objects.filter(policy=policy).count() == 2


@pytest.mark.parametrize(
    ("rules", "where"),
    [
        ([{"id": "r", "when": "payload.amount_claimed >", "outcome": "assessed"}], "rules.0.when"),
        ([{"id": "r", "when": "true", "outcome": "assessed", "amount": "payload.(x"}], "rules.0.amount"),
        ([{"id": "r", "when": "true", "outcome": "assessed", "confidence": "-0.5"}], "rules.0.confidence"),
        ({"id": "not-a-list"}, "rules"),
    ],
)
def test_the_rule_agent_admin_shows_a_form_error_for_invalid_expressions(superuser_client, rules, where):
    before = _counts()
    response = superuser_client.post(
        "/admin/operations/ruleagentversion/add/",
        {"agent_key": "claims.glass", "version": "1", "rules": json.dumps(rules)},
    )
    assert response.status_code == 200 and "rules" in response.context["adminform"].form.errors
    assert where in response.content.decode()
    assert not RuleAgentVersion.objects.exists() and _counts() == before


@pytest.mark.parametrize("limit", ["-1", "abc", "1e30"])
def test_the_cost_budget_admin_shows_a_form_error_for_a_negative_or_absurd_limit(superuser_client, limit):
    before = _counts()
    response = superuser_client.post(
        "/admin/governance/agentcostbudget/add/", {"agent_key": "claims.communication", "daily_limit": limit}
    )
    assert response.status_code == 200 and "daily_limit" in response.context["adminform"].form.errors
    assert not AgentCostBudget.objects.exists() and _counts() == before


@pytest.mark.parametrize(
    ("change", "field"),
    [({"throttle_rate": "lots/min"}, "throttle_rate"), ({"scopes": ["root"]}, "scopes"), ({"name": ""}, "name")],
)
def test_the_api_client_admin_shows_a_form_error_and_creates_no_client(superuser_client, change, field):
    before = _counts()
    data = {"name": "erp", "scopes": ["cases:read"], "queues": "", "throttle_rate": "", **change}
    response = superuser_client.post("/admin/operations/apiclient/add/", data)
    assert response.status_code == 200 and field in response.context["adminform"].form.errors
    assert _counts() == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"base_url": "ftp://models.example/v1"}, "base_url"),
        ({"timeout": "-1"}, "timeout"),
        ({"price_in": "-0.5"}, "price_in"),
        ({"model": ""}, "model"),  # a base URL without a model
    ],
)
def test_the_llm_endpoint_admin_shows_a_form_error_and_saves_nothing(superuser_client, settings, change, field):
    settings.SELFOPS_LLM = {}
    before = _counts()
    data = {
        "active": "on",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "letters-1",
        "api_key": "",
        "timeout": "5",
        "price_in": "0.5",
        "price_out": "1.5",
        **change,
    }
    response = superuser_client.post("/admin/operations/llmendpoint/add/", data)
    assert response.status_code == 200 and field in response.context["adminform"].form.errors
    assert not LLMEndpoint.objects.exists() and _counts() == before


# --- management commands ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["simulate", "--cases", "-3"],
        ["simulate", "--cases", "lots"],
        ["sweep", "--limit", "0"],
        ["sweep", "--limit", "-1"],
        ["load_demo", "--policies", "0"],
        ["load_demo", "--policies", "-5"],
        ["bench_portal", "--cases", "-1", "--open-escalations", "0"],
        ["bench_portal", "--cases", "10", "--open-escalations", "11"],
        ["bench", "engine", "--clusters", "0"],
        ["agent_replay", "claims.intake", "no-such-version"],
        ["agent_replay", "claims.intake", "v1", "--last", "-1"],
        ["api_client_create", "erp", "--scopes", "root"],
        ["api_client_create", "erp", "--scopes", "cases:read", "--throttle-rate", "lots"],
        ["api_client_create", "", "--scopes", "cases:read"],
        ["train_agent", "claims.assessment_ml", "--since", "yesterday"],
        ["train_agent", "claims.assessment_ml", "--synthetic", "-1"],
        ["train_agent", "no.such.model", "--synthetic", "10"],
        ["serve", "--stream-rate", "-1"],
        ["serve", "--stream-rate", "nan"],
        ["bench", "warp"],
        ["bench", "engine", "--cases", "0"],
        ["bench", "engine", "--rate", "-1"],
        ["bench_portal", "--runs", "0"],
        ["bench_audit", "--events", "0"],
        ["bench", "portal"],
        ["bench_governance", "--evaluations", "-1"],
        ["audit_seal", "--batch-size", "0"],
        ["audit_export", "--from-seq", "5", "--to-seq", "1", "--out", "OUT"],
        ["audit_export", "--from-seq", "1", "--to-seq", "1", "--out", "MISSING/x.jsonl"],
        ["audit_verify", "--from-seq", "3"],
        ["audit_verify", "--digest", "MISSING/digest.json"],
        ["audit_verify", "--archive", "MISSING/range.jsonl"],
        ["audit_digest", "--out", "MISSING/digest.json"],
        ["audit_digest", "--dir", "FILE"],
    ],
    ids=lambda c: " ".join(c),
)
def test_every_command_refuses_bad_arguments_with_a_command_error_and_writes_nothing(
    claims_workflow, tmp_path, command
):
    (tmp_path / "FILE").write_text("not a folder")
    args = [a.replace("MISSING", str(tmp_path / "missing")).replace("FILE", str(tmp_path / "FILE")) for a in command]
    args = [str(tmp_path / "out.jsonl") if a == "OUT" else a for a in args]
    before = _counts()

    with pytest.raises(CommandError) as refused:
        call_command(*args)

    assert str(refused.value).strip()
    assert _counts() == before
    assert not (tmp_path / "missing").exists() and not (tmp_path / "out.jsonl").exists()


def test_the_cost_budget_admin_saves_a_good_limit(superuser_client):
    # the control for the refusals above
    response = superuser_client.post(
        "/admin/governance/agentcostbudget/add/", {"agent_key": "claims.communication", "daily_limit": "12.50"}
    )
    assert response.status_code == 302
    assert AgentCostBudget.objects.get().daily_limit == Decimal("12.50")
