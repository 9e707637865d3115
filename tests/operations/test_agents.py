from decimal import Decimal

import pytest

from operations.agents import Proposal, ProposalError, agent, get_agent


def test_a_valid_proposal_normalises_amount_and_confidence():
    p = Proposal(outcome="approve", action="approve", amount="1234.5", confidence=1, rationale="ok", data={"a": 1})
    assert p.amount == Decimal("1234.50") and p.confidence == 1.0
    assert Proposal.from_dict(p.as_dict()) == p


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"outcome": ""}, "outcome"),
        ({"outcome": None}, "outcome"),
        ({"outcome": "x", "amount": 12.5}, "not a float"),
        ({"outcome": "x", "amount": "twelve"}, "not a number"),
        ({"outcome": "x", "amount": "-1"}, "out of range"),
        ({"outcome": "x", "amount": "1e12"}, "out of range"),
        ({"outcome": "x", "amount": "NaN"}, "out of range"),
        ({"outcome": "x", "confidence": 1.5}, "between 0 and 1"),
        ({"outcome": "x", "confidence": float("nan")}, "between 0 and 1"),
        ({"outcome": "x", "confidence": "high"}, "between 0 and 1"),
        ({"outcome": "x", "confidence": True}, "between 0 and 1"),
        ({"outcome": "x", "data": ["not", "a", "dict"]}, "data"),
        ({"outcome": "x", "action": 3}, "action"),
    ],
)
def test_proposals_that_break_the_contract_are_refused(kwargs, message):
    with pytest.raises(ProposalError, match=message):
        Proposal(**kwargs)


@pytest.mark.django_db  # an unknown key falls back to the rule agents defined in the admin
def test_the_registry_finds_agents_by_key_with_their_version():
    @agent("test.registry", version="7")
    def fn(ctx):
        return Proposal(outcome="ok")

    registered = get_agent("test.registry")
    assert registered.fn is fn and registered.version == "7"
    assert get_agent("test.nobody") is None
