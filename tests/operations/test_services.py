import threading
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations import engine
from operations.errors import Conflict, ValidationFailed
from operations.models import Case, CaseStatus, Escalation, EscalationStatus, OutboxEntry, OutboxKind, Resolution
from operations.services import case_submit, escalation_resolve, outbox_deliver
from tests.helpers import senior_user, settle, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def supervisor(db, settings):
    # one person decides alone here; four-eyes has its own tests (tests/operations/test_portal_services.py)
    settings.SELFOPS = {**settings.SELFOPS, "FOUR_EYES_AMOUNT": "1000000", "SENIOR_APPROVAL_LIMIT": "1000000"}
    return Actor.user(senior_user("sam"))


def _escalated(generator, scenario="over_limit") -> Escalation:
    case = submit(generator.claim(scenario))
    engine.advance_case(case.pk)
    return Escalation.objects.get(case=case, status=EscalationStatus.OPEN)


def test_submit_rejects_a_bad_payload_with_every_field_error_and_stores_nothing(claims_workflow):
    payload = {
        "policy_number": 7,
        "claim_type": "spaceship",
        "loss_date": "yesterday",
        "amount_claimed": -5,
        "claimant": {"name": ""},
        "documents": "none",
    }
    cases, events = Case.objects.count(), AuditEvent.objects.count()

    with pytest.raises(ValidationFailed) as err:
        case_submit(workflow_key="claims", reference="BAD-1", payload=payload, actor=Actor.system("t"))

    fields = err.value.fields
    for field in ("policy_number", "claim_type", "loss_date", "amount_claimed", "claimant", "documents"):
        assert any(k.startswith(field) for k in fields), (field, fields)
    assert (Case.objects.count(), AuditEvent.objects.count()) == (cases, events)


@pytest.mark.parametrize(
    "workflow, reference, payload, field",
    [
        ("nope", "R-1", {}, "workflow"),
        ("claims", "", {}, "reference"),
        ("claims", "R-2", ["not", "an", "object"], "payload"),
    ],
)
def test_submit_refuses_unknown_workflows_and_missing_references(claims_workflow, workflow, reference, payload, field):
    with pytest.raises(ValidationFailed) as err:
        case_submit(workflow_key=workflow, reference=reference, payload=payload, actor=Actor.system("t"))
    assert field in err.value.fields
    assert not Case.objects.exists()


def test_submit_twice_with_one_reference_is_a_conflict(claim_generator):
    claim = claim_generator.claim("straight_through")
    submit(claim)
    with pytest.raises(Conflict):
        submit(claim)
    assert Case.objects.filter(reference=claim.reference).count() == 1


def test_a_submitted_case_is_audited_and_enqueued_in_the_same_transaction(claim_generator):
    from django_q.models import OrmQ

    queued = OrmQ.objects.count()
    case = submit(claim_generator.claim("straight_through"))
    assert AuditEvent.objects.filter(case_id=case.pk, action=AuditAction.CASE_SUBMITTED).count() == 1
    assert OrmQ.objects.count() == queued + 1


def test_approve_applies_the_agents_proposal_and_the_case_goes_on(claim_generator, supervisor):
    escalation = _escalated(claim_generator)

    escalation_resolve(
        escalation_id=escalation.pk,
        actor=supervisor,
        resolution=Resolution.APPROVE,
        note="Repair estimate checked against the photos.",
    )
    settle(escalation.case_id)

    case = Case.objects.get(pk=escalation.case_id)
    assert case.status == CaseStatus.COMPLETED
    assert OutboxEntry.objects.get(case=case, kind=OutboxKind.PAYMENT).amount == escalation.amount
    assert case.context["decisions"]["approval"]["decided_by"] == "human:sam"
    event = AuditEvent.objects.get(action=AuditAction.ESCALATION_RESOLVED, subject_id=str(escalation.pk))
    assert event.actor_type == "user" and event.data["note"].startswith("Repair estimate")


def test_amend_and_approve_pays_the_amended_amount(claim_generator, supervisor):
    escalation = _escalated(claim_generator)
    escalation_resolve(
        escalation_id=escalation.pk,
        actor=supervisor,
        resolution=Resolution.AMEND,
        amount=Decimal("4321.00"),
        note="Labour hours reduced to the standard.",
    )
    settle(escalation.case_id)
    assert OutboxEntry.objects.get(case_id=escalation.case_id, kind=OutboxKind.PAYMENT).amount == Decimal("4321.00")


def test_reject_follows_the_steps_reject_outcome_and_sends_a_denial(claim_generator, supervisor):
    escalation = _escalated(claim_generator)
    escalation_resolve(
        escalation_id=escalation.pk,
        actor=supervisor,
        resolution=Resolution.REJECT,
        note="Pre-existing damage visible on the photos.",
    )
    settle(escalation.case_id)
    case = Case.objects.get(pk=escalation.case_id)
    assert case.status == CaseStatus.REJECTED
    assert not OutboxEntry.objects.filter(case=case, kind=OutboxKind.PAYMENT).exists()
    assert OutboxEntry.objects.get(case=case, kind=OutboxKind.MESSAGE).payload["letter"] == "denial"


def test_retry_returns_the_step_to_the_agent_with_the_instruction(claim_generator, supervisor):
    escalation = _escalated(claim_generator, "low_confidence")
    escalation_resolve(
        escalation_id=escalation.pk,
        actor=supervisor,
        resolution=Resolution.RETRY,
        note="Re-run with the corrected invoice",
        instruction="use invoice total",
    )
    case = Case.objects.get(pk=escalation.case_id)
    assert case.status == CaseStatus.RUNNING and case.context["instructions"]["assessment"] == "use invoice total"
    settle(case.pk)
    # the same claim is still low-confidence: a new escalation opens, the old one is resolved
    assert Escalation.objects.filter(case=case, status=EscalationStatus.OPEN).count() == 1


def test_cancel_case(claim_generator, supervisor):
    escalation = _escalated(claim_generator)
    escalation_resolve(
        escalation_id=escalation.pk,
        actor=supervisor,
        resolution=Resolution.CANCEL_CASE,
        note="Customer withdrew the claim.",
    )
    assert Case.objects.get(pk=escalation.case_id).status == CaseStatus.CANCELLED


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"resolution": "approve", "note": "  "}, "note"),
        ({"resolution": "bless", "note": "n"}, "resolution"),
        ({"resolution": "amend", "note": "n", "amount": "-1"}, "amount"),
        ({"resolution": "amend", "note": "n", "outcome": "teleport"}, "outcome"),
    ],
)
def test_bad_resolutions_are_refused_and_change_nothing(claim_generator, supervisor, kwargs, field):
    escalation = _escalated(claim_generator)
    with pytest.raises(ValidationFailed) as err:
        escalation_resolve(escalation_id=escalation.pk, actor=supervisor, **kwargs)
    assert field in err.value.fields
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.OPEN
    assert Case.objects.get(pk=escalation.case_id).status == CaseStatus.WAITING


def test_resolving_twice_is_a_conflict(claim_generator, supervisor):
    escalation = _escalated(claim_generator)
    escalation_resolve(escalation_id=escalation.pk, actor=supervisor, resolution="approve", note="ok")
    with pytest.raises(Conflict, match="already resolved by sam"):
        escalation_resolve(escalation_id=escalation.pk, actor=supervisor, resolution="reject", note="no")


@pytest.mark.django_db(transaction=True)
def test_two_people_resolving_at_once_one_wins_nothing_applied_twice(claims_workflow, settings):
    from operations.packs.claims.data import ClaimGenerator
    from operations.packs.claims.install import policies_in_db

    if connection.vendor != "postgresql":
        pytest.skip("row-lock concurrency is tested on PostgreSQL")
    settings.SELFOPS = {**settings.SELFOPS, "FOUR_EYES_AMOUNT": "1000000", "SENIOR_APPROVAL_LIMIT": "1000000"}
    escalation = _escalated(ClaimGenerator(policies_in_db(), seed=9))
    users = [Actor.user(senior_user(n)) for n in ("ann", "bob")]
    barrier = threading.Barrier(2)
    results = []

    def resolve(actor, resolution):
        try:
            barrier.wait()
            escalation_resolve(escalation_id=escalation.pk, actor=actor, resolution=resolution, note="decided")
            results.append("won")
        except Conflict:
            results.append("conflict")
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=resolve, args=(u, r)) for u, r in zip(users, ["approve", "reject"], strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict", "won"]
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_RESOLVED).count() == 1


def test_outbox_delivery_sends_the_letter_once(claim_generator, mailoutbox):
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    letter = OutboxEntry.objects.get(case=case, kind=OutboxKind.MESSAGE)

    outbox_deliver(idempotency_key=letter.idempotency_key)
    outbox_deliver(idempotency_key=letter.idempotency_key)  # delivered again: nothing happens

    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [case.payload["claimant"]["email"]]
    assert "approved" in mailoutbox[0].subject
    letter.refresh_from_db()
    assert letter.status == "delivered" and letter.attempts == 1


def test_the_sweeper_re_enqueues_only_cases_nobody_is_advancing(claim_generator, settings):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    from operations.services import cases_sweep

    # given a case whose worker died (lease expired), one lost between commit and enqueue, and a healthy one
    dead, lost, healthy = (submit(claim_generator.claim("straight_through")) for _ in range(3))
    now = timezone.now()
    lease = settings.Q_CLUSTER["timeout"]  # the worker took its lease a whole lease period ago, then died
    Case.objects.filter(pk=dead.pk).update(
        lease_owner="w", lease_expires_at=now - timedelta(seconds=5), updated_at=now - timedelta(seconds=lease + 5)
    )
    Case.objects.filter(pk=lost.pk).update(
        updated_at=now - timedelta(seconds=settings.SELFOPS["SWEEP_STALE_AFTER"] + 5)
    )
    Case.objects.filter(pk=healthy.pk).update(lease_owner="w2", lease_expires_at=now + timedelta(seconds=30))
    OrmQ.objects.all().delete()

    # when the sweeper runs
    assert cases_sweep(now=now) == 2

    # then exactly the two stranded cases are back on the queue, and the sweep is audited
    assert OrmQ.objects.count() == 2
    requeued = set(AuditEvent.objects.filter(action=AuditAction.CASE_REQUEUED).values_list("case_id", flat=True))
    assert requeued == {dead.pk, lost.pk}
