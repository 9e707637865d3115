import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.actors import Actor
from operations import engine
from operations.api.clients import api_client_create
from operations.models import ApiScope, Escalation, EscalationStatus

HANDLERS = "Claims handlers"
SIU = "Special investigations"


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    """Throttle counters live in the cache and key on client ids, which a rolled-back test can hand out again."""
    cache.clear()
    yield
    cache.clear()


class Caller:
    """An HTTP caller with one API key (or none)."""

    def __init__(self, client=None, key: str | None = None):
        self.client = client
        self.key = key
        self.http = APIClient()
        if key:
            self.http.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

    def get(self, url, **params):
        return self.http.get(url, params or None)

    def post(self, url, data=None, **headers):
        return self.http.post(url, data if data is not None else {}, format="json", headers=headers or None)

    def delete(self, url):
        return self.http.delete(url)

    def submit(self, claim, key: str | None = None):
        body = {"workflow": "claims", "reference": claim.reference, "payload": claim.payload}
        return self.post("/api/v1/cases/", body, **{"Idempotency-Key": key or f"k-{claim.reference}"})


@pytest.fixture
def make_caller(db):
    def make(name: str, scopes=tuple(ApiScope.values), queues=(HANDLERS,), throttle_rate: str = "") -> Caller:
        client, key = api_client_create(
            name=name,
            scopes=list(scopes),
            queues=list(queues),
            throttle_rate=throttle_rate,
            actor=Actor.system("test"),
        )
        return Caller(client, key)

    return make


@pytest.fixture
def intake(make_caller):
    """A claims intake system: every scope, the claims handlers' queue."""
    return make_caller("intake")


@pytest.fixture
def other(make_caller):
    """Another client, on another queue, that must never reach the intake's data."""
    return make_caller("other", queues=(SIU,))


def escalated_via(caller: Caller, generator, scenario: str = "over_limit") -> Escalation:
    response = caller.submit(generator.claim(scenario))
    assert response.status_code == 201, response.json()
    engine.advance_case(response.json()["id"])
    return Escalation.objects.get(case_id=response.json()["id"], status=EscalationStatus.OPEN)
