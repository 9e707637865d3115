from collections import Counter

import pytest

from operations.models import Case, Escalation, EscalationStatus, OutboxEntry
from operations.packs.claims.data import SCENARIOS, ClaimGenerator, generate_policies
from operations.packs.claims.install import install, policies_in_db
from tests.helpers import END_STATE, settle, submit

pytestmark = pytest.mark.django_db


def test_reference_data_is_deterministic_and_holds_no_account_numbers():
    a, b = generate_policies(50), generate_policies(50)
    assert a == b
    for policy in a:
        assert len(policy["account_last4"]) == 4
        assert not any(k in policy for k in ("account_number", "iban"))


def test_the_generator_is_reproducible_from_its_seed(claims_workflow):
    policies = policies_in_db()
    first = [(c.reference, c.payload) for c in ClaimGenerator(policies, seed=3).claims(30)]
    again = [(c.reference, c.payload) for c in ClaimGenerator(policies, seed=3).claims(30)]
    assert first == again


def test_installing_the_pack_twice_changes_nothing(claims_workflow):
    from audit.actors import Actor

    again = install(actor=Actor.system("test"), policies=400)
    assert again.pk == claims_workflow.pk and again.version == 1


def test_every_scenario_ends_as_intended_and_the_mix_looks_like_a_real_insurer(claim_generator):
    # given 160 claims drawn from the demo mix
    claims = claim_generator.claims(160)
    cases = {submit(c).pk: c for c in claims}

    # when the engine has run them all in-process
    settle(*cases)

    # then every claim ended as its scenario intends
    ended = dict(Case.objects.filter(pk__in=cases).values_list("pk", "status"))
    wrong = [
        (cases[pk].scenario, status) for pk, status in ended.items() if END_STATE.get(status) != cases[pk].expected
    ]
    assert not wrong, Counter(wrong)
    # and the mix is plausible: most go straight through, 10-40 % reach a human
    outcomes = Counter(c.expected for c in claims)
    assert outcomes["completed"] > len(claims) * 0.4
    assert 0.10 <= outcomes["escalated"] / len(claims) <= 0.40
    assert {c.scenario for c in claims} == set(SCENARIOS)
    # one open escalation per waiting case, one payment per completed case
    waiting = [pk for pk, s in ended.items() if s == "waiting"]
    assert Escalation.objects.filter(case_id__in=waiting, status=EscalationStatus.OPEN).count() == len(waiting)
    completed = [pk for pk, s in ended.items() if s == "completed"]
    assert OutboxEntry.objects.filter(case_id__in=completed, kind="payment").count() == len(completed)
