"""evaluate() is pure, complete (every reason) and fails closed; rules are CEL expressions validated on publish."""

from decimal import Decimal

import pytest

from governance.evaluation import PolicySnapshot, evaluate
from governance.rules import expression_error, rule_errors
from operations.agents import Proposal

THEFT_RULE = {
    "id": "theft_cap",
    "expression": 'proposal.amount <= 2500.0 || case.payload.claim_type != "home_theft"',
    "reason_code": "theft_over_2500",
    "message": "Theft claims above 2,500 need a handler",
}


def snapshot(**terms) -> PolicySnapshot:
    return PolicySnapshot(agent_key="claims.approval", version=3, **terms)


def proposal(**kw) -> Proposal:
    return Proposal(**{"outcome": "approve", "action": "approve", "confidence": 0.9, **kw})


CASE = {"id": 1, "reference": "CLM-1", "workflow": "claims", "payload": {"claim_type": "home_theft"}, "context": {}}


def codes(verdict):
    return [r.code for r in verdict.reasons]


@pytest.mark.parametrize(
    "terms, kwargs, code",
    [
        ({"allowed_actions": ("approve", "deny")}, {"action": "refer"}, "action_not_allowed"),
        ({"max_amount": Decimal("5000")}, {"amount": Decimal("5000.01")}, "amount_over_limit"),
        ({"min_confidence": Decimal("0.70")}, {"confidence": 0.69}, "low_confidence"),
        ({"rules": (THEFT_RULE,)}, {"amount": Decimal("2500.01")}, "theft_over_2500"),
        ({"autonomy": "shadow"}, {}, "shadow"),
        ({"autonomy": "supervised"}, {}, "supervised"),
        ({"autonomy": "off"}, {}, "agent_off"),
    ],
)
def test_each_limit_escalates_just_past_it_and_allows_at_it(terms, kwargs, code):
    verdict = evaluate(snapshot(**terms), proposal(**kwargs), CASE)
    assert (verdict.decision, codes(verdict)) == ("escalate", [code])
    assert verdict.policy_version == 3


@pytest.mark.parametrize(
    "terms, kwargs",
    [
        ({"allowed_actions": ("approve", "deny")}, {"action": "deny"}),
        ({"max_amount": Decimal("5000")}, {"amount": Decimal("5000.00")}),
        ({"min_confidence": Decimal("0.70")}, {"confidence": 0.70}),
        ({"rules": (THEFT_RULE,)}, {"amount": Decimal("2500.00")}),
        ({"autonomy": "bounded"}, {}),
    ],
)
def test_at_the_limit_is_allowed(terms, kwargs):
    assert evaluate(snapshot(**terms), proposal(**kwargs), CASE).decision == "allow"


def test_every_reason_is_reported_not_just_the_first():
    # given a supervised policy that every limit of the proposal breaks
    policy = snapshot(
        autonomy="supervised",
        allowed_actions=("deny",),
        max_amount=Decimal("100"),
        min_confidence=Decimal("0.95"),
        rules=(THEFT_RULE, {**THEFT_RULE, "id": "not_theft", "expression": 'case.payload.claim_type != "home_theft"'}),
    )
    # when the proposal is judged
    verdict = evaluate(policy, proposal(amount=Decimal("3000"), confidence=0.5), CASE)
    # then every reason is there, with the values compared
    assert codes(verdict) == [
        "supervised",
        "action_not_allowed",
        "amount_over_limit",
        "low_confidence",
        "theft_over_2500",
        "theft_over_2500",
    ]
    by_code = {r.code: r for r in verdict.reasons}
    assert by_code["amount_over_limit"].values == {"amount": "3000.00", "limit": "100"}
    assert [r.rule_id for r in verdict.reasons[-2:]] == ["theft_cap", "not_theft"]
    assert verdict.reasons[-1].values["expression"] == 'case.payload.claim_type != "home_theft"'


def test_a_rule_that_errors_fails_closed_with_policy_error_and_other_reasons_stay():
    # given a rule over the amount, and a proposal that has none (null <= double is a CEL error)
    policy = snapshot(max_amount=Decimal("10"), min_confidence=Decimal("0.9"), rules=(THEFT_RULE,))
    verdict = evaluate(policy, proposal(amount=None, confidence=0.1), CASE)
    assert verdict.decision == "escalate"
    assert codes(verdict) == ["low_confidence", "policy_error"]
    assert verdict.reasons[1].rule_id == "theft_cap"


def test_a_missing_payload_field_fails_closed_but_has_guards_it():
    missing = {**THEFT_RULE, "expression": "case.payload.other_party == false"}
    guarded = {**THEFT_RULE, "id": "g", "expression": "!has(case.payload.other_party) || !case.payload.other_party"}
    assert codes(evaluate(snapshot(rules=(missing,)), proposal(), CASE)) == ["policy_error"]
    assert evaluate(snapshot(rules=(guarded,)), proposal(), CASE).decision == "allow"


def test_a_non_boolean_rule_result_does_not_allow():
    rule = {**THEFT_RULE, "expression": "proposal.confidence"}
    verdict = evaluate(snapshot(rules=(rule,)), proposal(), CASE)
    assert codes(verdict) == ["theft_over_2500"] and verdict.reasons[0].values["result"] == "0.9"


def test_broken_stored_rules_fail_closed():
    policy = snapshot(rules=({"id": "x", "expression": "proposal.amount <=", "reason_code": "x", "message": "m"},))
    verdict = evaluate(policy, proposal(), CASE)
    assert codes(verdict) == ["policy_error"]


def test_a_malformed_proposal_fails_closed():
    class Weird:
        action, amount, confidence, outcome = "approve", "lots", 0.9, "approve"

    verdict = evaluate(snapshot(max_amount=Decimal(1)), Weird(), CASE)
    assert codes(verdict) == ["policy_error"] and verdict.decision == "escalate"


def test_no_policy_escalates():
    assert codes(evaluate(None, proposal(), CASE)) == ["no_policy"]


def test_decimal_amounts_reach_rules_as_doubles_exact_to_the_cent():
    # the proposal amount is a Decimal; float() rounds it like CEL rounds the literal, so the cent boundary holds
    rule = {**THEFT_RULE, "expression": "proposal.amount <= 2500.01"}
    policy = snapshot(rules=(rule,))
    assert evaluate(policy, proposal(amount=Decimal("2500.01")), CASE).decision == "allow"
    assert evaluate(policy, proposal(amount=Decimal("2500.02")), CASE).decision == "escalate"
    # an int literal compares with the double too
    int_rule = {**THEFT_RULE, "expression": "proposal.amount <= 2500"}
    assert evaluate(snapshot(rules=(int_rule,)), proposal(amount=Decimal("2500.00")), CASE).decision == "allow"
    # payload amounts keep their JSON type (string or number): double() reads both
    payload_rule = {**THEFT_RULE, "expression": "double(case.payload.amount_claimed) <= 100.0"}
    for claimed in ("99.99", 99.99, 100):
        case = {**CASE, "payload": {"amount_claimed": claimed}}
        assert evaluate(snapshot(rules=(payload_rule,)), proposal(), case).decision == "allow"
    assert (
        evaluate(
            snapshot(rules=(payload_rule,)), proposal(), {**CASE, "payload": {"amount_claimed": "100.01"}}
        ).decision
        == "escalate"
    )


@pytest.mark.parametrize(
    "expression, problem",
    [
        ("proposal.amount <=", "syntax error"),
        ("amount <= 10", "unknown name 'amount'"),
        ("request.user == 'x'", "unknown name 'request'"),
        ("proposal.amout <= 10.0", "unknown field 'proposal.amout'"),
        ("case.pyload.x == 1", "unknown field 'case.pyload'"),
        ("proposal.action.kind == 'x'", "'proposal.action' has no fields"),
    ],
)
def test_expression_problems_are_named(expression, problem):
    assert problem in expression_error(expression)


@pytest.mark.parametrize(
    "expression",
    [
        THEFT_RULE["expression"],
        "case.payload.documents.all(d, d.size_bytes < 10000000)",
        "proposal.data.score > 0.5 || proposal.rationale.contains('manual')",
        "'proposal.amout' != case.reference",
    ],
)
def test_valid_expressions_pass(expression):
    assert expression_error(expression) == ""


def test_rule_definitions_need_every_key_and_unique_ids():
    errors = rule_errors([THEFT_RULE, THEFT_RULE, {"id": "x"}, "nope", {**THEFT_RULE, "id": "y", "reason_code": "Bad"}])
    assert errors["rules[1].id"] == "duplicate rule id 'theft_cap'"
    assert {
        "rules[2].expression",
        "rules[2].reason_code",
        "rules[2].message",
        "rules[3]",
        "rules[4].reason_code",
    } <= set(errors)
    assert rule_errors([THEFT_RULE]) == {} and rule_errors(None) == {}
