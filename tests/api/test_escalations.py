import threading

import pytest
from django.db import close_old_connections

from audit.models import AuditAction, AuditEvent
from operations.models import Case, CaseStatus, Escalation, EscalationStatus
from tests.api.conftest import Caller, escalated_via
from tests.conftest import postgres_only
from tests.helpers import settle

pytestmark = pytest.mark.django_db


def test_list_is_filtered_by_status_and_reason(intake, claim_generator):
    escalation = escalated_via(intake, claim_generator)

    open_ = intake.get("/api/v1/escalations/", status="open").json()["results"]
    by_reason = intake.get("/api/v1/escalations/", reason=escalation.reason).json()["results"]
    other_reason = intake.get("/api/v1/escalations/", reason="no-such-reason").json()["results"]

    assert [e["id"] for e in open_] == [escalation.pk] == [e["id"] for e in by_reason]
    assert other_reason == []
    assert open_[0]["case_reference"] == escalation.case.reference and open_[0]["amount"] == str(escalation.amount)


def test_the_api_filters_escalations_as_the_portal_queue_does(intake, claim_generator):
    # given an open escalation (the API and the portal share one FilterSet per model)
    escalation = escalated_via(intake, claim_generator)

    # when filtering by the queue's filters: amount, SLA state, case, unclaimed
    above = intake.get("/api/v1/escalations/", amount_min=str(escalation.amount + 1)).json()["results"]
    within = intake.get("/api/v1/escalations/", amount_max=str(escalation.amount), claimed="unclaimed").json()
    of_case = intake.get("/api/v1/escalations/", case=escalation.case_id).json()["results"]
    resolved = intake.get("/api/v1/escalations/", view="resolved").json()["results"]
    bad = intake.get("/api/v1/escalations/", sla="purple")
    mine_before = intake.get("/api/v1/escalations/", claimed="me").json()["results"]
    intake.post(f"/api/v1/escalations/{escalation.pk}/claim/")
    mine_after = intake.get("/api/v1/escalations/", claimed="me").json()["results"]
    unclaimed_after = intake.get("/api/v1/escalations/", claimed="unclaimed").json()["results"]

    # then
    assert above == [] and resolved == [] and mine_before == [] and unclaimed_after == []
    assert [e["id"] for e in mine_after] == [escalation.pk]
    assert [e["id"] for e in within["results"]] == [escalation.pk] == [e["id"] for e in of_case]
    assert bad.status_code == 400


def test_claim_then_a_colleague_claiming_gets_409(intake, make_caller, claim_generator):
    escalation = escalated_via(intake, claim_generator)
    colleague = make_caller("colleague")

    mine = intake.post(f"/api/v1/escalations/{escalation.pk}/claim/")
    again = intake.post(f"/api/v1/escalations/{escalation.pk}/claim/")
    theirs = colleague.post(f"/api/v1/escalations/{escalation.pk}/claim/")

    assert (mine.status_code, again.status_code, theirs.status_code) == (200, 200, 409)
    assert mine.json()["claimed_by"] == "api client intake"
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_CLAIMED, subject_id=str(escalation.pk)).count() == 1


def test_resolve_approves_audited_as_the_client_and_the_case_goes_on(intake, claim_generator):
    escalation = escalated_via(intake, claim_generator)

    response = intake.post(
        f"/api/v1/escalations/{escalation.pk}/resolve/", {"resolution": "approve", "note": "photos checked"}
    )
    settle(escalation.case_id)

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["resolved_by"]) == ("resolved", "intake")
    assert Case.objects.get(pk=escalation.case_id).status == CaseStatus.COMPLETED
    event = AuditEvent.objects.get(action=AuditAction.ESCALATION_RESOLVED, subject_id=str(escalation.pk))
    assert event.actor_type == "api_client"


def test_resolving_twice_is_a_409_and_a_missing_note_a_400(intake, claim_generator):
    escalation = escalated_via(intake, claim_generator)
    url = f"/api/v1/escalations/{escalation.pk}/resolve/"

    no_note = intake.post(url, {"resolution": "approve"})
    blank_note = intake.post(url, {"resolution": "approve", "note": "  "})
    bad = intake.post(url, {"resolution": "shrug", "note": "x", "amount": "lots"})
    first = intake.post(url, {"resolution": "reject", "note": "pre-existing damage"})
    second = intake.post(url, {"resolution": "approve", "note": "looks fine"})

    assert (no_note.status_code, blank_note.status_code) == (400, 400)
    assert "note" in no_note.json()["fields"] and "note" in blank_note.json()["fields"]
    assert bad.status_code == 400 and {"resolution", "amount"} <= set(bad.json()["fields"])
    assert (first.status_code, second.status_code) == (200, 409)
    assert second.json()["error"] == "conflict"
    assert Escalation.objects.get(pk=escalation.pk).resolution == "reject"


@postgres_only()
@pytest.mark.django_db(transaction=True)
def test_two_clients_resolving_at_once_one_wins_the_other_gets_409(intake, make_caller, claim_generator):
    escalation = escalated_via(intake, claim_generator)
    colleague = make_caller("colleague")
    barrier = threading.Barrier(2)
    statuses = []

    def resolve(caller: Caller, resolution: str):
        barrier.wait()
        try:
            statuses.append(
                Caller(caller.client, caller.key)
                .post(f"/api/v1/escalations/{escalation.pk}/resolve/", {"resolution": resolution, "note": "n"})
                .status_code
            )
        finally:
            close_old_connections()

    threads = [
        threading.Thread(target=resolve, args=(intake, "approve")),
        threading.Thread(target=resolve, args=(colleague, "reject")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(statuses) == [200, 409]
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.RESOLVED
    assert AuditEvent.objects.filter(action=AuditAction.ESCALATION_RESOLVED, subject_id=str(escalation.pk)).count() == 1


def test_a_failed_payment_escalation_cannot_be_approved_through_the_api_and_retry_owes_the_same_payment(
    intake, claim_generator, settings
):
    from operations.models import OutboxEntry, OutboxKind, OutboxStatus
    from tests.gateway_server import refused_payment_escalation

    escalation = refused_payment_escalation(claim_generator.claim("straight_through"), settings)
    url = f"/api/v1/escalations/{escalation.pk}/resolve/"

    approve = intake.post(url, {"resolution": "approve", "note": "pay it"})
    retry = intake.post(url, {"resolution": "retry", "note": "gateway fixed"})

    assert approve.status_code == 400 and approve.json()["fields"] == {"resolution": "retry, reject or cancel_case"}
    assert retry.status_code == 200 and retry.json()["status"] == "resolved"
    [payment] = OutboxEntry.objects.filter(case=escalation.case, kind=OutboxKind.PAYMENT)
    assert payment.status == OutboxStatus.PENDING and payment.escalation_id == escalation.pk
