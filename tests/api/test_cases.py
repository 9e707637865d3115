import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone

from audit.models import AuditAction, AuditEvent
from operations.api.idempotency import idempotency_cleanup
from operations.models import Case, CaseStatus, EscalationStatus, IdempotencyRecord, IdempotencyStatus
from tests.api.conftest import escalated_via
from tests.conftest import postgres_only
from tests.helpers import settle

pytestmark = pytest.mark.django_db


def test_submit_creates_a_case_owned_by_the_client_and_audited_as_the_client(intake, claim_generator):
    claim = claim_generator.claim("straight_through")

    response = intake.submit(claim)

    assert response.status_code == 201
    body = response.json()
    case = Case.objects.get(pk=body["id"])
    assert (body["reference"], body["workflow"], body["status"]) == (claim.reference, "claims", "running")
    assert case.submitted_by_client == intake.client
    event = AuditEvent.objects.get(case_id=case.pk, action=AuditAction.CASE_SUBMITTED)
    assert (event.actor_type, event.actor_id) == ("api_client", str(intake.client.pk))


def test_the_same_key_and_body_replays_the_first_answer_and_creates_nothing(intake, claim_generator):
    claim = claim_generator.claim("straight_through")
    first = intake.submit(claim, key="retry-me")

    again = intake.submit(claim, key="retry-me")

    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert Case.objects.filter(reference=claim.reference).count() == 1


def test_the_same_key_with_another_body_is_refused_with_422(intake, claim_generator):
    intake.submit(claim_generator.claim("straight_through"), key="k1")
    other_claim = claim_generator.claim("straight_through")

    response = intake.submit(other_claim, key="k1")

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert not Case.objects.filter(reference=other_claim.reference).exists()


def test_the_same_key_while_the_first_request_is_in_flight_is_a_409(intake, claim_generator):
    # given a first request under "k-busy" that has taken its key and not finished yet
    claim = claim_generator.claim("straight_through")
    body = {"workflow": "claims", "reference": claim.reference, "payload": claim.payload}
    from operations.api.idempotency import request_hash

    IdempotencyRecord.objects.create(client=intake.client, key="k-busy", request_hash=request_hash(body))

    response = intake.post("/api/v1/cases/", body, **{"Idempotency-Key": "k-busy"})

    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_in_flight"
    assert not Case.objects.filter(reference=claim.reference).exists()


def test_an_in_flight_key_whose_request_died_is_taken_over_after_a_while(intake, claim_generator):
    claim = claim_generator.claim("straight_through")
    body = {"workflow": "claims", "reference": claim.reference, "payload": claim.payload}
    from operations.api.idempotency import request_hash

    record = IdempotencyRecord.objects.create(client=intake.client, key="k-dead", request_hash=request_hash(body))
    IdempotencyRecord.objects.filter(pk=record.pk).update(locked_at=timezone.now() - timedelta(minutes=5))

    response = intake.post("/api/v1/cases/", body, **{"Idempotency-Key": "k-dead"})

    assert response.status_code == 201
    assert IdempotencyRecord.objects.get(pk=record.pk).status == IdempotencyStatus.DONE


def test_keys_are_per_client(intake, make_caller, claim_generator):
    crm = make_caller("crm")
    intake.submit(claim_generator.claim("straight_through"), key="shared")

    response = crm.submit(claim_generator.claim("straight_through"), key="shared")

    assert response.status_code == 201


def test_a_missing_idempotency_key_is_a_400(intake, claim_generator):
    claim = claim_generator.claim("straight_through")
    response = intake.post("/api/v1/cases/", {"workflow": "claims", "reference": "R", "payload": claim.payload})
    assert response.status_code == 400
    assert response.json()["fields"] == {"Idempotency-Key": "required"}


def test_a_bad_payload_gets_every_field_error_and_stores_nothing(intake, claims_workflow):
    payload = {"policy_number": 7, "claim_type": "spaceship", "amount_claimed": -5, "documents": "none"}
    before = (Case.objects.count(), AuditEvent.objects.count())

    response = intake.post(
        "/api/v1/cases/", {"workflow": "claims", "reference": "BAD-1", "payload": payload}, **{"Idempotency-Key": "b"}
    )

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    for field in ("policy_number", "claim_type", "amount_claimed", "documents", "payload"):
        assert any(k.startswith(field) for k in body["fields"]), (field, body["fields"])
    assert (Case.objects.count(), AuditEvent.objects.count()) == before
    assert not IdempotencyRecord.objects.exists()


def test_a_key_refused_for_bad_input_may_be_used_again_with_a_corrected_body(intake, claim_generator):
    claim = claim_generator.claim("straight_through")
    body = {"workflow": "claims", "reference": claim.reference, "payload": {}}
    bad = intake.post("/api/v1/cases/", body, **{"Idempotency-Key": "x"})
    good = intake.submit(claim, key="x")
    assert (bad.status_code, good.status_code) == (400, 201)


@pytest.mark.parametrize(
    "body, fields",
    [
        ({}, {"workflow", "reference", "payload"}),
        ({"workflow": "nope", "reference": "R-1", "payload": {}}, {"workflow"}),
        ({"workflow": "claims", "reference": "R-1", "payload": ["a"]}, {"payload"}),
    ],
)
def test_malformed_submissions_name_their_fields(intake, claims_workflow, body, fields):
    response = intake.post("/api/v1/cases/", body, **{"Idempotency-Key": "m"})
    assert response.status_code == 400
    assert fields <= set(response.json()["fields"])
    assert not Case.objects.exists()


def test_a_second_case_with_the_same_reference_is_a_409(intake, claim_generator):
    claim = claim_generator.claim("straight_through")
    intake.submit(claim, key="one")
    response = intake.submit(claim, key="two")
    assert response.status_code == 409
    assert response.json()["fields"] == {"reference": "taken"}


def test_list_filters_and_pages_with_a_cursor(intake, other, claim_generator):
    mine = [intake.submit(claim_generator.claim("straight_through")).json()["id"] for _ in range(3)]
    other.submit(claim_generator.claim("straight_through"))
    settle(mine[0])

    page = intake.get("/api/v1/cases/", limit=2).json()
    rest = intake.get(page["next"]).json()
    completed = intake.get("/api/v1/cases/", status="completed").json()
    by_reference = intake.get("/api/v1/cases/", reference=Case.objects.get(pk=mine[1]).reference).json()
    future = intake.get("/api/v1/cases/", created_after=(timezone.now() + timedelta(hours=1)).isoformat()).json()

    assert [c["id"] for c in page["results"]] + [c["id"] for c in rest["results"]] == sorted(mine, reverse=True)
    assert rest["next"] is None
    assert [c["id"] for c in completed["results"]] == [mine[0]]
    assert [c["id"] for c in by_reference["results"]] == [mine[1]]
    assert future["results"] == []


def test_a_bad_filter_value_is_a_400_in_the_error_shape(intake, claims_workflow):
    response = intake.get("/api/v1/cases/", status="sideways")
    assert response.status_code == 400
    assert set(response.json()) == {"error", "message", "fields"} and "status" in response.json()["fields"]


def test_detail_shows_steps_proposals_verdicts_and_escalations(intake, claim_generator):
    escalation = escalated_via(intake, claim_generator)

    body = intake.get(f"/api/v1/cases/{escalation.case_id}/").json()

    assert body["status"] == "waiting"
    assert body["steps"] and all("proposal" in s and "verdict" in s for s in body["steps"])
    assert body["steps"][-1]["status"] == "escalated"
    assert body["steps"][-1]["verdict"]["decision"] == "escalate"
    assert [e["id"] for e in body["escalations"]] == [escalation.pk]


def test_timeline_lists_the_cases_audit_events_in_order(intake, claim_generator):
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    settle(case_id)

    events = intake.get(f"/api/v1/cases/{case_id}/timeline/").json()

    actions = [e["action"] for e in events]
    assert actions[0] == "case.submitted"
    # the payment and letter are delivered by the same worker right after the case completes
    assert actions[actions.index("case.completed") + 1 :] == ["effect.delivered", "effect.delivered"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


def test_cancel_cancels_an_open_case_and_its_escalation_audited(intake, claim_generator):
    escalation = escalated_via(intake, claim_generator)

    response = intake.post(f"/api/v1/cases/{escalation.case_id}/cancel/", {"reason": "customer withdrew"})

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    escalation.refresh_from_db()
    assert escalation.status == EscalationStatus.CANCELLED
    event = AuditEvent.objects.get(case_id=escalation.case_id, action=AuditAction.CASE_CANCELLED)
    assert event.actor_type == "api_client" and event.data["note"] == "customer withdrew"


def test_cancel_needs_a_reason_and_a_finished_case_cannot_be_cancelled(intake, claim_generator):
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    no_reason = intake.post(f"/api/v1/cases/{case_id}/cancel/", {})
    settle(case_id)

    finished = intake.post(f"/api/v1/cases/{case_id}/cancel/", {"reason": "too late"})

    assert no_reason.status_code == 400 and "reason" in no_reason.json()["fields"]
    assert finished.status_code == 409
    assert Case.objects.get(pk=case_id).status == CaseStatus.COMPLETED


def test_a_cancelled_running_case_is_not_advanced_by_a_worker(intake, claim_generator):
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    intake.post(f"/api/v1/cases/{case_id}/cancel/", {"reason": "duplicate claim"})

    from operations.engine import advance_case

    assert advance_case(case_id) == "skipped"
    assert Case.objects.get(pk=case_id).status == CaseStatus.CANCELLED


def test_cleanup_forgets_keys_older_than_48_hours_only(intake, claim_generator):
    old = IdempotencyRecord.objects.create(client=intake.client, key="old", request_hash="a")
    young = IdempotencyRecord.objects.create(client=intake.client, key="young", request_hash="b")
    IdempotencyRecord.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=49))
    IdempotencyRecord.objects.filter(pk=young.pk).update(created_at=timezone.now() - timedelta(hours=25))

    assert idempotency_cleanup() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["young"]


@postgres_only()
@pytest.mark.django_db(transaction=True)
def test_two_requests_with_one_key_at_once_create_one_case(intake, claim_generator):
    claim = claim_generator.claim("straight_through")
    barrier = threading.Barrier(4)
    statuses = []

    def post():
        from tests.api.conftest import Caller

        caller = Caller(intake.client, intake.key)
        barrier.wait()
        try:
            statuses.append(caller.submit(claim, key="race").status_code)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert Case.objects.filter(reference=claim.reference).count() == 1
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}


def test_a_time_filter_with_any_valid_offset_works_and_an_unrepresentable_one_is_a_400(intake, claim_generator):
    # given a case submitted now (PostgreSQL takes offsets up to ±15:59 only; Python parses up to ±23:59)
    intake.submit(claim_generator.claim("straight_through"))

    # when the list is filtered with far offsets (found by schemathesis: this was a 500 on PostgreSQL)
    past = intake.get("/api/v1/cases/", created_after="2001-06-09T14:57:39.7-21:30")
    future = intake.get("/api/v1/cases/", created_after="2673-06-09T14:57:39.7+23:30")
    overflow = intake.get("/api/v1/cases/", created_after="9999-12-31T23:00:00-21:30")

    # then the times are compared in UTC, and one beyond the calendar is a clear 400
    assert (past.status_code, len(past.json()["results"])) == (200, 1)
    assert (future.status_code, future.json()["results"]) == (200, [])
    assert overflow.status_code == 400
    assert "created_after" in overflow.json()["fields"]
