import logging

import pytest
from rest_framework.test import APIRequestFactory

from operations.api.views import ApiView

pytestmark = pytest.mark.django_db


class Boom(ApiView):
    def get(self, request):
        raise RuntimeError("password=hunter2 in /srv/selfops/secret.py line 12")


def test_an_unhandled_error_is_a_500_with_a_correlation_id_and_no_internals(intake, caplog):
    request = APIRequestFactory().get("/boom", HTTP_AUTHORIZATION=f"Bearer {intake.key}")

    with caplog.at_level(logging.ERROR, logger="selfops.api"):
        response = Boom.as_view()(request)
    response.render()

    body = response.data
    correlation_id = response["X-Correlation-ID"]
    assert response.status_code == 500
    assert body["error"] == "server_error" and body["correlation_id"] == correlation_id
    assert "hunter2" not in response.content.decode() and "Traceback" not in response.content.decode()
    logged = [r for r in caplog.records if correlation_id in r.getMessage()]
    assert logged and logged[0].exc_info[0] is RuntimeError


def test_unsupported_media_and_methods_use_the_error_shape(intake, claims_workflow):
    wrong_type = intake.http.post("/api/v1/cases/", "a=b", content_type="application/x-www-form-urlencoded")
    wrong_method = intake.http.put("/api/v1/cases/", {}, format="json")

    assert (wrong_type.status_code, wrong_type.json()["error"]) == (415, "unsupported_media_type")
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    assert "GET" in wrong_method["Allow"]


def test_malformed_json_is_a_400(intake, claims_workflow):
    response = intake.http.post(
        "/api/v1/cases/", "{not json", content_type="application/json", headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 400 and set(response.json()) == {"error", "message", "fields"}


def test_a_path_that_matches_no_route_answers_json_under_the_api(intake, client):
    assert intake.get("/api/v1/cases/not-a-number/").json() == {
        "error": "not_found",
        "message": "not found",
        "fields": {},
    }
    assert client.get("/no-such-page/")["Content-Type"].startswith("text/html")


def test_every_answer_carries_a_correlation_id_which_its_audit_events_share(intake, claim_generator):
    from audit.models import AuditAction, AuditEvent

    response = intake.http.post(
        "/api/v1/cases/",
        {"workflow": "claims", "reference": "C-1", "payload": claim_generator.claim("straight_through").payload},
        format="json",
        headers={"Idempotency-Key": "c", "X-Request-ID": "req-0123456789"},
    )
    plain = intake.get("/api/v1/cases/")

    assert response["X-Correlation-ID"] == "req-0123456789"
    assert AuditEvent.objects.get(action=AuditAction.CASE_SUBMITTED).correlation_id == "req-0123456789"
    assert len(plain["X-Correlation-ID"]) == 32
