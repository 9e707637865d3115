import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.api.clients import api_client_revoke, api_client_rotate
from operations.models import ApiClient, ApiScope
from tests.api.conftest import Caller

pytestmark = pytest.mark.django_db


def test_without_a_credential_the_answer_is_401_in_the_error_shape(claims_workflow):
    response = Caller().get("/api/v1/cases/")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert set(response.json()) == {"error", "message", "fields"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", ["sok_nothere_abc", "sok_0123456789ab_wrongsecret", "not-a-key", ""])
def test_an_unknown_key_is_a_401(intake, key):
    caller = Caller()
    caller.http.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert caller.get("/api/v1/cases/").status_code == 401


def test_a_key_with_the_right_prefix_and_a_wrong_secret_is_a_401(intake):
    forged = intake.key[: -len("xxxx")] + "xxxx"
    assert Caller(intake.client, forged).get("/api/v1/cases/").status_code == 401


def test_only_a_hash_of_the_key_is_stored(intake):
    row = ApiClient.objects.filter(pk=intake.client.pk).values().get()
    assert intake.key not in str(row)
    assert row["key_prefix"] in intake.key and len(row["key_hash"]) == 64


def test_a_rotated_key_stops_working_and_the_new_one_works(intake):
    client, new_key = api_client_rotate(client_id=intake.client.pk, actor=Actor.system("t"))
    assert intake.get("/api/v1/cases/").status_code == 401
    assert Caller(client, new_key).get("/api/v1/cases/").status_code == 200
    assert AuditEvent.objects.filter(action=AuditAction.API_CLIENT_ROTATED, subject_id=str(client.pk)).exists()


def test_a_revoked_client_is_refused_at_once(intake):
    api_client_revoke(client_id=intake.client.pk, actor=Actor.system("t"))
    assert intake.get("/api/v1/cases/").status_code == 401


@pytest.mark.parametrize(
    "method, url, scope",
    [
        ("post", "/api/v1/cases/", ApiScope.CASES_WRITE),
        ("get", "/api/v1/cases/", ApiScope.CASES_READ),
        ("get", "/api/v1/escalations/", ApiScope.ESCALATIONS_READ),
        ("post", "/api/v1/escalations/1/resolve/", ApiScope.ESCALATIONS_RESOLVE),
        ("post", "/api/v1/escalations/1/claim/", ApiScope.ESCALATIONS_RESOLVE),
        ("get", "/api/v1/governance/agents/", ApiScope.GOVERNANCE_READ),
        ("post", "/api/v1/governance/stops/engage/", ApiScope.GOVERNANCE_STOP),
        ("get", "/api/v1/audit/events/", ApiScope.AUDIT_READ),
        ("get", "/api/v1/metrics/summary", ApiScope.METRICS_READ),
        ("get", "/metrics", ApiScope.METRICS_READ),
        ("get", "/api/v1/webhooks/subscriptions/", ApiScope.WEBHOOKS_MANAGE),
    ],
)
def test_each_endpoint_needs_its_scope(make_caller, method, url, scope):
    without = make_caller("without", scopes=[s for s in ApiScope.values if s != scope])
    with_only = make_caller("with-only", scopes=[scope])

    refused = getattr(without, method)(url)
    allowed = getattr(with_only, method)(url)

    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden" and scope in refused.json()["message"]
    assert allowed.status_code != 403


def test_a_client_over_its_rate_gets_429_with_retry_after(make_caller, claims_workflow):
    caller = make_caller("chatty", throttle_rate="3/min")
    calm = make_caller("calm", throttle_rate="3/min")

    statuses = [caller.get("/api/v1/cases/").status_code for _ in range(4)]
    last = caller.get("/api/v1/cases/")

    assert statuses == [200, 200, 200, 429]
    assert last.json()["error"] == "throttled"
    assert 1 <= int(last.headers["Retry-After"]) <= 60
    assert calm.get("/api/v1/cases/").status_code == 200  # counted per client


def test_the_command_prints_the_key_once_and_it_works(db):
    out, err = io.StringIO(), io.StringIO()
    call_command("api_client_create", "bi-tool", "--scopes", "metrics:read", "cases:read", stdout=out, stderr=err)
    key = out.getvalue().strip()
    client = ApiClient.objects.get(name="bi-tool")

    assert key.startswith("sok_") and key not in err.getvalue()
    assert client.scopes == ["cases:read", "metrics:read"]
    assert Caller(client, key).get("/api/v1/metrics/summary").status_code == 200


def test_the_admin_creates_a_client_and_shows_its_key_once(client, db):
    admin = get_user_model().objects.create_superuser("root", password="x" * 12)
    client.force_login(admin)

    response = client.post(
        "/admin/operations/apiclient/add/",
        {"name": "crm", "scopes": ["cases:read"], "queues": "Claims handlers\n", "throttle_rate": ""},
        follow=True,
    )

    created = ApiClient.objects.get(name="crm")
    shown = [str(m) for m in response.context["messages"]]
    assert created.queues == ["Claims handlers"]
    assert any(created.key_prefix in m for m in shown)
    key = next(m for m in shown if created.key_prefix in m).rsplit(" ", 1)[1]
    assert Caller(created, key).get("/api/v1/cases/").status_code == 200
    assert AuditEvent.objects.get(action=AuditAction.API_CLIENT_CREATED).actor_type == "user"


def test_a_malformed_throttle_rate_is_refused_when_the_client_is_created(db):
    from operations.api.clients import api_client_create
    from operations.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as err:
        api_client_create(name="x", scopes=["cases:read"], throttle_rate="lots", actor=Actor.system("t"))
    assert "throttle_rate" in err.value.fields
    assert not ApiClient.objects.exists()
