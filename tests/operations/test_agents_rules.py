"""Rule agents: CEL rules checked at save, a test panel in the admin, and run by the engine once live."""

import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.agents import get_agent
from operations.agents import versions as agent_versions
from operations.agents.rules import rule_agent_save, rule_agent_try, rule_errors
from operations.errors import ValidationFailed
from operations.models import AgentVersion, RuleAgentVersion, StepRun
from tests.helpers import settle, submit

ADMIN = Actor.system("test-admin")
GLASS_RULES = [
    {
        "id": "small-glass",
        "when": "payload.claim_type == 'auto_glass' && double(payload.amount_claimed) <= 1200.0",
        "outcome": "assessed",
        "action": "estimate",
        "amount": "double(payload.amount_claimed) - double(context.deductible)",
        "confidence": "double(payload.amount_claimed) < 600.0 ? 0.95 : 0.8",
    },
    {"id": "rest", "when": "true", "outcome": "assessed", "action": "estimate", "amount": "0", "confidence": 0.1},
]


def test_the_first_rule_that_holds_makes_the_proposal():
    proposal = rule_agent_try(
        rules=GLASS_RULES,
        payload={"claim_type": "auto_glass", "amount_claimed": "450.50"},
        context={"deductible": "50"},
    )
    assert (proposal.outcome, proposal.amount, proposal.confidence) == ("assessed", Decimal("400.50"), 0.95)
    assert proposal.data == {"rule": "small-glass"}
    other = rule_agent_try(rules=GLASS_RULES, payload={"claim_type": "travel", "amount_claimed": "90"})
    assert (other.amount, other.confidence, other.data["rule"]) == (Decimal("0.00"), 0.1, "rest")


def test_invalid_expressions_and_unknown_names_are_refused_with_field_errors():
    errors = rule_errors(
        [
            {"when": "payload.amount >", "outcome": "x"},
            {"when": "amount > 3", "outcome": "x"},
            {"when": "true", "outcome": "", "confidence": 1.5},
        ]
    )
    assert set(errors) == {"rules.0.when", "rules.1.when", "rules.2.outcome", "rules.2.confidence"}
    assert "amount" in errors["rules.1.when"]
    assert rule_errors([]) == {"rules": "must be a non-empty list of rules"}


@pytest.mark.django_db
def test_saving_invalid_rules_changes_nothing():
    with pytest.raises(ValidationFailed) as exc:
        rule_agent_save(agent_key="x.y", version="1", rules=[{"when": "1 +", "outcome": "a"}], actor=ADMIN)
    assert "rules.0.when" in exc.value.fields
    assert not RuleAgentVersion.objects.exists() and not AgentVersion.objects.exists()


@pytest.mark.django_db
def test_a_rule_failing_at_run_time_is_an_agent_error_not_a_crash():
    with pytest.raises(ValidationFailed, match="could not be evaluated"):
        rule_agent_try(rules=GLASS_RULES, payload={"claim_type": "auto_glass", "amount_claimed": "100"}, context={})


def test_a_live_rule_agent_runs_in_the_engine_and_records_its_version(claim_generator):
    # given a rule agent for a new key, replayed and promoted, and a workflow step using the key
    rule_agent_save(
        agent_key="claims.intake",
        version="rules-1",
        rules=[{"when": "true", "outcome": "accepted", "action": "accept", "confidence": 0.99}],
        actor=ADMIN,
    )
    agent_versions.agent_replay(agent_key="claims.intake", version="rules-1", last=5, actor=ADMIN)
    agent_versions.agent_version_promote(agent_key="claims.intake", version="rules-1", actor=ADMIN)
    # when a claim runs
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    # then the intake step was decided by the rules, under their version
    run = StepRun.objects.get(case=case, step__key="intake")
    assert (run.agent_version, run.proposal["data"]) == ("rules-1", {"rule": "rule-1"})
    assert RuleAgentVersion.objects.get(version="rules-1").status == "live"


@pytest.mark.django_db
def test_get_agent_falls_back_to_a_live_rule_agent_defined_in_the_database():
    rule_agent_save(agent_key="custom.triage", version="1", rules=GLASS_RULES, actor=ADMIN)
    assert get_agent("custom.triage") is None  # a draft takes no traffic
    RuleAgentVersion.objects.filter(agent_key="custom.triage").update(status="live")
    registered = get_agent("custom.triage")
    assert (registered.version, registered.kind) == ("1", "rule")


@pytest.fixture
def admin_client_(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_admin_refuses_invalid_rules_and_saves_valid_ones_audited(admin_client_):
    url = reverse("admin:operations_ruleagentversion_add")
    bad = admin_client_.post(
        url, {"agent_key": "claims.intake", "version": "1", "rules": json.dumps([{"when": "(", "outcome": "a"}])}
    )
    assert bad.status_code == 200
    assert "rules.0.when" in bad.content.decode()
    assert not RuleAgentVersion.objects.exists()
    good = admin_client_.post(url, {"agent_key": "claims.glass", "version": "1", "rules": json.dumps(GLASS_RULES)})
    assert good.status_code == 302
    saved = RuleAgentVersion.objects.get()
    assert (saved.created_by, saved.status) == ("root", "draft")
    assert AuditEvent.objects.filter(action=AuditAction.RULE_AGENT_SAVED, actor_label="root").count() == 1


def test_admin_test_panel_shows_the_proposal_for_a_pasted_payload(admin_client_):
    version = rule_agent_save(agent_key="claims.glass", version="1", rules=GLASS_RULES, actor=ADMIN)
    url = reverse("admin:operations_ruleagent_try", args=[version.pk])
    assert admin_client_.get(url).status_code == 200
    page = admin_client_.post(
        url,
        {
            "payload": json.dumps({"claim_type": "auto_glass", "amount_claimed": "700"}),
            "context": json.dumps({"deductible": "50"}),
        },
    ).content.decode()
    assert "650.00" in page and "small-glass" in page
    failing = admin_client_.post(url, {"payload": json.dumps({"claim_type": "auto_glass"}), "context": ""})
    assert "could not be evaluated" in failing.content.decode()
