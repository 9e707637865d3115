"""Portal services: claiming, four-eyes approvals, reason codes, retry pending, reassignment, SLA breaches."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import close_old_connections, connection
from django.utils import timezone

from audit.models import AuditAction, AuditEvent
from operations.errors import Conflict, NotAllowed, ValidationFailed
from operations.models import Case, CaseStatus, Escalation, EscalationStatus, OutboxEntry, OutboxKind
from operations.services import (
    ensure_roles,
    escalation_claim,
    escalation_claim_next,
    escalation_release,
    escalation_resolve,
    escalations_reassign,
    escalations_sla_check,
)
from tests.helpers import settle
from tests.portal.helpers import HANDLERS, SIU, actor, escalate, make_user

pytestmark = pytest.mark.django_db


# --- claiming ------------------------------------------------------------------------------------------------------


def test_claim_next_takes_the_most_urgent_unclaimed_item_of_my_queues(claim_generator, people):
    later = escalate(claim_generator)
    urgent = escalate(claim_generator)
    other_queue = escalate(claim_generator, queue=SIU)
    now = timezone.now()
    Escalation.objects.filter(pk=later.pk).update(priority=2, sla_deadline=now + timedelta(hours=1))
    Escalation.objects.filter(pk=urgent.pk).update(priority=2, sla_deadline=now + timedelta(minutes=5))
    Escalation.objects.filter(pk=other_queue.pk).update(priority=1, sla_deadline=now)

    first = escalation_claim_next(actor=actor(people["handler"]))
    second = escalation_claim_next(actor=actor(people["handler"]))
    third = escalation_claim_next(actor=actor(people["handler"]))

    assert (first.pk, second.pk, third) == (urgent.pk, later.pk, None)
    assert Escalation.objects.get(pk=urgent.pk).claimed_by == people["handler"]
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_CLAIMED, subject_id=str(urgent.pk)).count() == 1


def test_a_claimed_item_cannot_be_claimed_or_resolved_by_someone_else(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("1200.00"))
    escalation_claim(escalation_id=escalation.pk, actor=actor(people["handler"]))

    with pytest.raises(Conflict, match="already claimed by handler"):
        escalation_claim(escalation_id=escalation.pk, actor=actor(people["ann"]))
    with pytest.raises(Conflict, match="claimed by handler"):
        escalation_resolve(
            escalation_id=escalation.pk, actor=actor(people["ann"]), resolution="approve", note="mine now"
        )
    with pytest.raises(NotAllowed):
        escalation_release(escalation_id=escalation.pk, actor=actor(people["ann"]))

    escalation_release(escalation_id=escalation.pk, actor=actor(people["senior"]))  # a senior may release anyone's
    assert Escalation.objects.get(pk=escalation.pk).claimed_by is None
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_RELEASED).count() == 1


def test_auditors_and_other_queues_cannot_act(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("1200.00"))
    with pytest.raises(NotAllowed):
        escalation_claim(escalation_id=escalation.pk, actor=actor(people["auditor"]))
    with pytest.raises(NotAllowed):
        escalation_resolve(escalation_id=escalation.pk, actor=actor(people["auditor"]), resolution="approve", note="x")
    with pytest.raises(NotAllowed, match="not in one of your queues"):
        escalation_claim(escalation_id=escalation.pk, actor=actor(people["siu"]))
    assert escalation_claim_next(actor=actor(people["siu"])) is None
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.OPEN


@pytest.mark.django_db(transaction=True)
def test_two_supervisors_claiming_next_at_once_get_different_items(claims_workflow):
    from operations.packs.claims.data import ClaimGenerator
    from operations.packs.claims.install import policies_in_db

    if connection.vendor != "postgresql":
        pytest.skip("skip_locked row claiming is tested on PostgreSQL")
    generator = ClaimGenerator(policies_in_db(), seed=11)
    items = {escalate(generator).pk for _ in range(2)}
    users = [make_user(n, "Supervisor", HANDLERS) for n in ("tom", "una")]
    barrier = threading.Barrier(2)
    got = []

    def claim(user):
        try:
            barrier.wait()
            e = escalation_claim_next(actor=actor(user))
            got.append(e.pk if e else None)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=claim, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(got) == items and len(got) == 2
    assert {e.claimed_by_id for e in Escalation.objects.filter(pk__in=items)} == {u.pk for u in users}


# --- four-eyes and authority ---------------------------------------------------------------------------------------


def test_below_the_threshold_one_supervisor_decides(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("9500.00"))
    result = escalation_resolve(
        escalation_id=escalation.pk,
        actor=actor(people["handler"]),
        resolution="approve",
        note="photos match the estimate",
        reason_code="verified",
    )
    assert result.status == EscalationStatus.RESOLVED and result.reason_code == "verified"


def test_above_the_threshold_a_second_different_person_must_approve(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("7000.00"))

    first = escalation_resolve(
        escalation_id=escalation.pk,
        actor=actor(people["senior"]),
        resolution="amend",
        amount="32000.00",
        note="invoice shows more damage",
        reason_code="amount_corrected",
    )
    assert first.status == EscalationStatus.OPEN and first.pending_approval["by"] == "senior"
    assert Case.objects.get(pk=escalation.case_id).status == CaseStatus.WAITING
    assert not OutboxEntry.objects.filter(case_id=escalation.case_id).exists()
    with pytest.raises(NotAllowed, match="second, different person"):
        escalation_resolve(escalation_id=escalation.pk, actor=actor(people["senior"]), resolution="approve", note="ok")

    final = escalation_resolve(
        escalation_id=escalation.pk,
        actor=actor(people["handler"]),
        resolution="approve",
        note="agree with the amendment",
        reason_code="verified",
    )
    settle(escalation.case_id)

    assert final.status == EscalationStatus.RESOLVED
    assert final.resolution_data["approvers"] == ["senior", "handler"]
    payment = OutboxEntry.objects.get(case_id=escalation.case_id, kind=OutboxKind.PAYMENT)
    assert payment.amount == Decimal("32000.00")
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_APPROVAL_PENDING).count() == 1


def test_an_amount_above_a_supervisors_authority_needs_a_senior_among_the_two(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("30000.00"))
    escalation_resolve(escalation_id=escalation.pk, actor=actor(people["handler"]), resolution="approve", note="ok")

    with pytest.raises(NotAllowed, match="senior supervisor"):
        escalation_resolve(escalation_id=escalation.pk, actor=actor(people["ann"]), resolution="approve", note="ok")
    done = escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior"]), resolution="approve", note="ok"
    )
    assert done.status == EscalationStatus.RESOLVED


def test_above_the_senior_limit_even_a_senior_needs_a_second_person(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("80000.00"))
    first = escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior"]), resolution="approve", note="large loss verified"
    )
    assert first.status == EscalationStatus.OPEN
    done = escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior2"]), resolution="approve", note="agree"
    )
    assert done.status == EscalationStatus.RESOLVED and done.resolution_data["approvers"] == ["senior", "senior2"]


def test_the_amender_cannot_approve_a_second_amendment_of_their_own(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("20000.00"))
    escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior"]), resolution="amend", amount="15000", note="a"
    )
    # the second person amends again: their amendment now waits for someone other than them
    second = escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior2"]), resolution="amend", amount="14000", note="b"
    )
    assert second.status == EscalationStatus.OPEN and second.pending_approval["by"] == "senior2"
    with pytest.raises(NotAllowed):
        escalation_resolve(escalation_id=escalation.pk, actor=actor(people["senior2"]), resolution="approve", note="c")
    done = escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior"]), resolution="approve", note="d"
    )
    assert Decimal(done.resolution_data["proposal"]["amount"]) == Decimal("14000")


def test_a_reason_code_must_belong_to_the_resolution(claim_generator, people):
    escalation = escalate(claim_generator, amount=Decimal("1000"))
    with pytest.raises(ValidationFailed) as err:
        escalation_resolve(
            escalation_id=escalation.pk,
            actor=actor(people["handler"]),
            resolution="approve",
            note="n",
            reason_code="fraud_suspected",
        )
    assert "reason_code" in err.value.fields
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.OPEN


# --- retry stays visible -------------------------------------------------------------------------------------------


def test_a_retry_stays_pending_until_the_step_succeeds(claim_generator, people, settings):
    escalation = escalate(claim_generator, "low_confidence")
    escalation_resolve(
        escalation_id=escalation.pk,
        actor=actor(people["senior"]),
        resolution="retry",
        note="re-run with the invoice",
        reason_code="new_information",
        instruction="use the invoice",
    )
    assert Escalation.objects.get(pk=escalation.pk).retry_pending is True
    settle(escalation.case_id)  # still low confidence: escalated again, the retry is still pending
    again = Escalation.objects.get(case_id=escalation.case_id, status=EscalationStatus.OPEN)
    assert Escalation.objects.get(pk=escalation.pk).retry_pending is True

    settings.SELFOPS = {**settings.SELFOPS, "FOUR_EYES_AMOUNT": "1000000", "SENIOR_APPROVAL_LIMIT": "1000000"}
    escalation_resolve(escalation_id=again.pk, actor=actor(people["senior"]), resolution="approve", note="fine")

    assert Escalation.objects.get(pk=escalation.pk).retry_pending is False
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_RETRY_SUCCEEDED, case_id=escalation.case_id).exists()
    assert not Case.objects.get(pk=escalation.case_id).context.get("retry_pending")


def test_the_engine_clears_a_retry_when_the_agents_next_run_is_allowed(claim_generator, people):
    from governance.services import policy_publish
    from operations.packs.claims.definition import POLICIES

    escalation = escalate(claim_generator, "low_confidence")
    escalation_resolve(
        escalation_id=escalation.pk, actor=actor(people["senior"]), resolution="retry", note="retry", instruction="x"
    )
    # the governance admin lowers the confidence floor: the agent's next run is allowed
    terms = {**POLICIES[escalation.step.agent_key], "min_confidence": None}
    policy_publish(agent_key=escalation.step.agent_key, actor=actor(people["senior"]), **terms)
    settle(escalation.case_id)

    assert Escalation.objects.get(pk=escalation.pk).retry_pending is False
    assert not Escalation.objects.filter(case_id=escalation.case_id, status=EscalationStatus.OPEN, step=escalation.step)


# --- reassignment --------------------------------------------------------------------------------------------------


def test_bulk_reassign_is_for_seniors_and_audited(claim_generator, people):
    a, b = escalate(claim_generator), escalate(claim_generator)
    with pytest.raises(NotAllowed):
        escalations_reassign(escalation_ids=[a.pk, b.pk], actor=actor(people["handler"]), queue=SIU, note="fraud")

    escalations_reassign(escalation_ids=[a.pk, b.pk], actor=actor(people["senior"]), queue=SIU, note="fraud ring")

    assert set(Escalation.objects.filter(pk__in=[a.pk, b.pk]).values_list("queue", flat=True)) == {SIU}
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_REASSIGNED).count() == 2


def test_reassign_to_a_person_claims_it_for_them_if_they_work_the_queue(claim_generator, people):
    e = escalate(claim_generator)
    with pytest.raises(ValidationFailed, match="does not work the queue"):
        escalations_reassign(escalation_ids=[e.pk], actor=actor(people["handler"]), assignee=people["siu"], note="n")
    escalations_reassign(escalation_ids=[e.pk], actor=actor(people["handler"]), assignee=people["ann"], note="n")
    assert Escalation.objects.get(pk=e.pk).claimed_by == people["ann"]


# --- SLAs ----------------------------------------------------------------------------------------------------------


def test_sla_check_records_breaches_raises_priority_mails_the_queue_then_reassigns_to_seniors(
    claim_generator, people, settings
):
    settings.SELFOPS = {**settings.SELFOPS, "SLA_REASSIGN_AFTER": 3600}
    e = escalate(claim_generator)
    Escalation.objects.filter(pk=e.pk).update(priority=2)
    deadline = Escalation.objects.get(pk=e.pk).sla_deadline

    assert escalations_sla_check(now=deadline - timedelta(seconds=1)) == {"breached": 0, "reassigned": 0}
    with mail_outbox_after_commit() as sent:
        first = escalations_sla_check(now=deadline + timedelta(minutes=1))
    again = escalations_sla_check(now=deadline + timedelta(minutes=2))
    e.refresh_from_db()
    assert (first, again) == ({"breached": 1, "reassigned": 0}, {"breached": 0, "reassigned": 0})
    assert e.priority == 1 and e.sla_breached_at == deadline + timedelta(minutes=1)
    assert sent and set(sent[0].to) == {"handler@example.test", "ann@example.test", "senior@example.test",
                                         "senior2@example.test"}  # fmt: skip

    later = escalations_sla_check(now=deadline + timedelta(hours=2))
    e.refresh_from_db()
    assert later == {"breached": 0, "reassigned": 1}
    assert e.queue == "Senior supervisor" and e.sla_reassigned_at is not None
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_SLA_BREACHED, subject_id=str(e.pk)).count() == 1


class mail_outbox_after_commit:
    """Collect the mails sent by on_commit callbacks of the block (the test transaction never commits)."""

    def __enter__(self):
        from django.test import TestCase

        self._ctx = TestCase.captureOnCommitCallbacks(execute=True)
        self._ctx.__enter__()
        self.start = len(mail.outbox)
        self.sent = []
        return self.sent

    def __exit__(self, *exc):
        result = self._ctx.__exit__(*exc)
        self.sent.extend(mail.outbox[self.start :])
        return result


def test_ensure_roles_creates_roles_and_queue_groups_idempotently(claims_workflow):
    from django.contrib.auth.models import Group

    ensure_roles()
    ensure_roles()
    names = set(Group.objects.values_list("name", flat=True))
    assert {"Supervisor", "Senior supervisor", "Governance admin", "Auditor", HANDLERS, SIU} <= names
