"""Bad input anywhere: a clear error and nothing stored. Property tests for payload validation and evaluate()."""

import itertools
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from audit.actors import Actor
from audit.models import AuditEvent
from governance.evaluation import PolicySnapshot, evaluate
from governance.services import policy_publish
from operations import engine
from operations.agents import Proposal, agent
from operations.errors import ValidationFailed
from operations.models import Case, CaseStatus, Escalation, EscalationStatus, OutboxEntry, StepRun, StepRunStatus
from operations.services import MAX_PAYLOAD_BYTES, case_submit, workflow_install
from tests.helpers import submit

pytestmark = pytest.mark.django_db
actor = Actor.system("test")


def _counts():
    return Case.objects.count(), AuditEvent.objects.count(), OutboxEntry.objects.count()


# --- case_submit ----------------------------------------------------------------------------------------------------


def test_an_oversize_payload_is_refused_with_its_size_and_nothing_is_stored(claim_generator):
    payload = claim_generator.claim("straight_through").payload | {"description": "x" * (MAX_PAYLOAD_BYTES + 1)}
    before = _counts()

    with pytest.raises(ValidationFailed) as err:
        case_submit(workflow_key="claims", reference="BIG-1", payload=payload, actor=actor)

    assert err.value.fields == {"payload": "too large"}
    assert f"at most {MAX_PAYLOAD_BYTES:,} are accepted" in err.value.message
    assert _counts() == before


@pytest.mark.parametrize(
    "workflow, reference, payload, field",
    [
        ("claims", "NAN-1", {"amount_claimed": float("nan")}, "payload"),
        ("claims", "INF-1", {"amount_claimed": float("inf")}, "payload"),
        ("claims", "SET-1", {"documents": {1, 2}}, "payload"),
        ("claims", 12345, {}, "reference"),
        ("claims", None, {}, "reference"),
        ({"key": "claims"}, "R-1", {}, "workflow"),
        ("", "R-1", {}, "workflow"),
        ("no-such-workflow", "R-1", {}, "workflow"),
    ],
)
def test_wrong_types_and_unknown_workflows_are_refused(claims_workflow, workflow, reference, payload, field):
    before = _counts()
    with pytest.raises(ValidationFailed) as err:
        case_submit(workflow_key=workflow, reference=reference, payload=payload, actor=actor)
    assert field in err.value.fields
    assert _counts() == before


@pytest.mark.parametrize("amount", ["-5", -5, 0, "1e12", 10**12, "12.345", "abc", True, None, [], {"v": 1}])
def test_negative_absurd_and_mistyped_amounts_are_refused(claim_generator, amount):
    payload = claim_generator.claim("straight_through").payload | {"amount_claimed": amount}
    before = _counts()
    with pytest.raises(ValidationFailed) as err:
        case_submit(workflow_key="claims", reference=f"AMT-{amount!r}"[:100], payload=payload, actor=actor)
    assert any(k.startswith("amount_claimed") for k in err.value.fields), err.value.fields
    assert _counts() == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
CLAIM_FIELDS = ["policy_number", "claim_type", "loss_date", "amount_claimed", "claimant", "documents", "details"]
_refs = itertools.count()


@st.composite
def payloads(draw, valid: dict):
    """Random JSON, or a valid claim with some of its fields replaced by random JSON or dropped."""
    if draw(st.booleans()):
        return draw(json_values)
    payload = dict(valid)
    for name in draw(st.lists(st.sampled_from(CLAIM_FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            payload.pop(name, None)
        else:
            payload[name] = draw(json_values)
    return payload


def test_random_payloads_never_crash_submit_and_failures_store_nothing(claim_generator):
    valid = claim_generator.claim("straight_through").payload
    outcomes = {"created": 0, "refused": 0}

    @hsettings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(payload=payloads(valid))
    def check(payload):
        before = _counts()
        try:
            case = case_submit(workflow_key="claims", reference=f"PROP-{next(_refs)}", payload=payload, actor=actor)
        except ValidationFailed as exc:
            assert exc.message and isinstance(exc.fields, dict) and exc.fields
            assert _counts() == before
            outcomes["refused"] += 1
        else:
            assert case.pk and case.status == CaseStatus.RUNNING
            assert _counts()[:2] == (before[0] + 1, before[1] + 1)
            outcomes["created"] += 1

    check()
    assert outcomes["refused"] > 0


# --- evaluate() -----------------------------------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False)
good_policies = st.builds(
    PolicySnapshot,
    agent_key=st.just("a"),
    version=st.integers(1, 5),
    autonomy=st.sampled_from(["off", "shadow", "supervised", "bounded"]),
    allowed_actions=st.lists(st.sampled_from(["pay", "deny", "refer"]), max_size=3).map(tuple),
    max_amount=st.none() | amounts,
    min_confidence=st.none() | st.decimals(min_value=0, max_value=1, places=3),
)
good_proposals = st.builds(
    Proposal,
    outcome=st.sampled_from(["approve", "deny"]),
    action=st.sampled_from(["pay", "deny", "refer", ""]),
    amount=st.none() | amounts,
    confidence=st.floats(0, 1),
)
garbage = st.one_of(json_values, st.decimals(allow_nan=True, allow_infinity=True), st.just(object()))
garbage_proposals = (
    st.builds(
        SimpleNamespace,
        outcome=st.sampled_from(["approve", 7, None]),
        action=st.sampled_from(["pay", 3, None, ["pay"]]),
        amount=garbage,
        confidence=garbage,
    ).filter(lambda p: not _valid_proposal(p))
    | garbage
)
garbage_policies = st.builds(
    PolicySnapshot,
    agent_key=st.just("a"),
    version=st.integers(1, 5),
    autonomy=st.sampled_from(["bounded", "maybe", "", None]),
    allowed_actions=st.sampled_from([(), ("pay",), (1, 2), ("pay", None)]),
    max_amount=st.none() | garbage,
    min_confidence=st.none() | garbage,
).filter(lambda p: not _valid_policy(p))


def _valid_proposal(p) -> bool:
    try:
        Proposal(outcome=p.outcome, action=p.action, amount=p.amount, confidence=p.confidence)
    except Exception:
        return False
    # a Decimal confidence is as valid as a float: Proposal accepts it (and evaluate() judges it) since the governance
    # merge, so it is no garbage that must be escalated
    return (
        isinstance(p.amount, Decimal | None)
        and isinstance(p.confidence, float | int | Decimal)
        and p.amount == p.amount
    )


def _valid_policy(p) -> bool:
    def amount_ok(v):
        return v is None or (isinstance(v, Decimal) and v.is_finite() and v >= 0)

    return (
        p.autonomy in ("off", "shadow", "supervised", "bounded")
        and all(isinstance(a, str) for a in p.allowed_actions)
        and amount_ok(p.max_amount)
        and amount_ok(p.min_confidence)
        and (p.min_confidence is None or p.min_confidence <= 1)
    )


@hsettings(max_examples=150, deadline=None, database=None)
@given(policy=good_policies, proposal=good_proposals)
def test_evaluate_judges_every_valid_input_without_raising(policy, proposal):
    verdict = evaluate(policy, proposal, {"id": 1})
    assert verdict.decision in ("allow", "escalate")
    if verdict.allowed:
        assert policy.autonomy == "bounded" and not verdict.reasons
        assert policy.max_amount is None or proposal.amount is None or proposal.amount <= policy.max_amount


@hsettings(max_examples=150, deadline=None, database=None)
@given(policy=good_policies | garbage_policies, proposal=garbage_proposals)
def test_evaluate_never_allows_a_garbage_proposal(policy, proposal):
    verdict = evaluate(policy, proposal, {"id": 1})
    assert verdict.decision == "escalate" and verdict.reasons


@hsettings(max_examples=150, deadline=None, database=None)
@given(policy=garbage_policies, proposal=good_proposals)
def test_evaluate_never_allows_under_a_broken_policy(policy, proposal):
    verdict = evaluate(policy, proposal, {"id": 1})
    assert verdict.decision == "escalate"
    assert verdict.primary_reason in ("policy_error", "agent_off", "shadow", "supervised")


# --- agent output ---------------------------------------------------------------------------------------------------

GARBAGE_OUTPUTS = {
    "none": None,
    "list": ["done"],
    "float_amount": {"outcome": "done", "amount": 12.5},
    "negative_amount": {"outcome": "done", "amount": "-1"},
    "absurd_amount": {"outcome": "done", "amount": "1e15"},
    "nan_confidence": {"outcome": "done", "confidence": float("nan")},
    "confidence_text": {"outcome": "done", "confidence": "high"},
    "data_not_dict": {"outcome": "done", "data": ["x"]},
    "no_outcome": {"action": "pay"},
}
for _name, _output in GARBAGE_OUTPUTS.items():
    agent(f"test.garbage.{_name}")(lambda ctx, _output=_output: _output)


@pytest.mark.parametrize("name", sorted(GARBAGE_OUTPUTS))
def test_agent_output_violating_the_proposal_contract_is_an_agent_error_with_no_partial_write(name, settings):
    # given a one-step workflow with a payment effect whose agent returns garbage
    settings.SELFOPS = {**settings.SELFOPS, "STEP_MAX_ATTEMPTS": 2}
    key = f"test.garbage.{name}"
    workflow_install(
        definition={
            "key": f"garbage-{name}".replace("_", "-"),
            "name": "garbage",
            "steps": [
                {
                    "key": "only",
                    "name": "Only",
                    "agent_key": key,
                    "transitions": {"done": "@complete"},
                    "effect": "payment",
                }
            ],
        },
        actor=actor,
    )
    policy_publish(agent_key=key, actor=actor)
    case = case_submit(workflow_key=f"garbage-{name}".replace("_", "-"), reference="G-1", payload={}, actor=actor)

    # when a worker advances it
    engine.advance_case(case.pk)

    # then each attempt failed as an agent error, a human has the case, and nothing of the garbage was applied
    runs = list(StepRun.objects.filter(case=case).values_list("status", flat=True))
    assert runs == [StepRunStatus.FAILED, StepRunStatus.FAILED]
    assert Escalation.objects.get(case=case, status=EscalationStatus.OPEN).reason == "agent_error"
    case.refresh_from_db()
    assert case.context == {} and not OutboxEntry.objects.filter(case=case).exists()


# --- portal forms, admin, CLI -------------------------------------------------------------------------------------


@pytest.fixture
def open_escalation(claim_generator, client):
    from operations.roles import SUPERVISOR
    from tests.helpers import make_user

    case = submit(claim_generator.claim("over_limit"))
    engine.advance_case(case.pk)
    escalation = Escalation.objects.get(case=case)
    # a supervisor of the escalation's queue: resolving needs an acting role, or every post is a 403
    client.force_login(make_user("sam", SUPERVISOR, escalation.queue))
    return escalation


@pytest.mark.parametrize(
    "data",
    [
        {"resolution": "approve", "reason_code": "verified"},  # no note
        {"resolution": "approve", "note": "n"},  # no reason code
        {"resolution": "approve", "reason_code": "no-such-code", "note": "n"},
        {"resolution": "pay-everyone", "reason_code": "verified", "note": "n"},
        {"resolution": "amend", "reason_code": "amount_corrected", "note": "n", "amount": "-1", "outcome": "approve"},
        {"resolution": "amend", "reason_code": "amount_corrected", "note": "n", "amount": "1e20", "outcome": "approve"},
        {"resolution": "amend", "reason_code": "amount_corrected", "note": "n", "amount": "lots", "outcome": "approve"},
        {"resolution": "approve", "reason_code": "verified", "note": "n" * 5000},
        {"resolution": "amend", "reason_code": "outcome_corrected", "note": "n", "outcome": "x" * 200},
    ],
)
def test_the_resolve_form_refuses_bad_input_and_changes_nothing(open_escalation, client, data):
    before = _counts()
    response = client.post(f"/escalations/{open_escalation.pk}/resolve", data)
    assert response.status_code == 400
    open_escalation.refresh_from_db()
    assert open_escalation.status == EscalationStatus.OPEN and not open_escalation.pending_approval
    assert _counts() == before


def test_the_same_supervisor_resolves_with_good_input(open_escalation, client):
    # the control for the refusals above: they are about the input, not about who posts it
    data = {"resolution": "reject", "reason_code": "not_covered", "note": "n"}
    response = client.post(f"/escalations/{open_escalation.pk}/resolve", data)
    assert response.status_code == 302
    open_escalation.refresh_from_db()
    assert open_escalation.status == EscalationStatus.RESOLVED


def test_an_oversize_body_is_refused_before_any_view_runs(open_escalation, client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    before = _counts()
    data = {"resolution": "reject", "reason_code": "not_covered", "note": "n" * 2000}  # a valid form but for its size
    response = client.post(f"/escalations/{open_escalation.pk}/resolve", data)
    assert response.status_code == 400 and b'name="reason_code"' not in response.content  # not the form's own 400
    open_escalation.refresh_from_db()
    assert open_escalation.status == EscalationStatus.OPEN and _counts() == before


def test_the_admin_refuses_writes_to_operational_records(claims_workflow, admin_client):
    before = _counts()
    assert admin_client.post("/admin/operations/case/add/", {"reference": "X"}).status_code == 403
    assert admin_client.post("/admin/operations/outboxentry/add/", {"idempotency_key": "x"}).status_code == 403
    assert _counts() == before


@pytest.mark.parametrize("args", [["--cases", "0"], ["--cases", "-3"], ["--cases", "5", "--rate", "-1"]])
def test_the_cli_refuses_bad_arguments(claims_workflow, args):
    before = _counts()
    with pytest.raises(CommandError):
        call_command("simulate", *args)
    assert _counts() == before
