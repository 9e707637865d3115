"""OWASP API1:2023: every route that takes an id answers 404 to a caller who may not see that object."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.actors import Actor
from operations.api.webhooks import webhook_subscription_create
from operations.models import Case, CaseStatus, Escalation, EscalationStatus, WebhookDelivery
from tests.api.conftest import HANDLERS, SIU, escalated_via
from tests.helpers import settle

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned(intake, claim_generator):
    """Objects of the intake client: an escalated case (in the claims handlers' queue), a webhook subscription and
    a delivery."""
    subscription, _ = webhook_subscription_create(
        client=intake.client,
        url="http://127.0.0.1:9/hook",
        events=["escalation.opened"],
        actor=Actor.api_client(intake.client),
    )
    escalation = escalated_via(intake, claim_generator)
    delivery = WebhookDelivery.objects.get(subscription=subscription)
    return {
        "case": escalation.case_id,
        "escalation": escalation.pk,
        "subscription": subscription.pk,
        "delivery": delivery.pk,
    }


ROUTES = [
    ("get", "/api/v1/cases/{case}/"),
    ("get", "/api/v1/cases/{case}/timeline/"),
    ("get", "/api/v1/cases/{case}/dossier/"),
    ("post", "/api/v1/cases/{case}/cancel/"),
    ("get", "/api/v1/escalations/{escalation}/"),
    ("post", "/api/v1/escalations/{escalation}/claim/"),
    ("post", "/api/v1/escalations/{escalation}/resolve/"),
    ("get", "/api/v1/webhooks/subscriptions/{subscription}/"),
    ("delete", "/api/v1/webhooks/subscriptions/{subscription}/"),
    ("get", "/api/v1/webhooks/deliveries/{delivery}/"),
    ("post", "/api/v1/webhooks/deliveries/{delivery}/redeliver/"),
]
# every id-taking route of the API must be in ROUTES (checked below), so a new one cannot skip this test
BODIES = {"cancel": {"reason": "mine now"}, "resolve": {"resolution": "approve", "note": "mine now"}}


def _call(caller, method, url):
    body = next((b for k, b in BODIES.items() if f"/{k}/" in url), None)
    return caller.delete(url) if method == "delete" else getattr(caller, method)(url, *([body] if body else []))


def test_another_clients_ids_are_404_on_every_id_taking_route_and_change_nothing(owned, other):
    answers = {f"{method} {route}": _call(other, method, route.format(**owned)) for method, route in ROUTES}

    assert {r: a.status_code for r, a in answers.items()} == {r: 404 for r in answers}
    assert all(a.json() == {"error": "not_found", "message": "not found", "fields": {}} for a in answers.values())
    assert Case.objects.get(pk=owned["case"]).status == CaseStatus.WAITING
    escalation = Escalation.objects.get(pk=owned["escalation"])
    assert (escalation.status, escalation.claimed_by_client_id) == (EscalationStatus.OPEN, None)
    assert WebhookDelivery.objects.get(pk=owned["delivery"]).subscription.active


def test_ids_that_do_not_exist_are_the_same_404(intake, owned):
    absent = {k: v + 100000 for k, v in owned.items()}
    answers = {f"{method} {route}": _call(intake, method, route.format(**absent)) for method, route in ROUTES}
    assert {r: a.status_code for r, a in answers.items()} == {r: 404 for r in answers}


def test_the_owner_reaches_every_id_taking_route(intake, owned):
    reads = [(m, r) for m, r in ROUTES if m == "get"]
    answers = {route: _call(intake, method, route.format(**owned)).status_code for method, route in reads}
    assert answers == {route: 200 for _, route in reads}


def test_a_client_on_the_same_queue_sees_the_escalation_but_not_the_case(owned, make_caller):
    colleague = make_caller("colleague", queues=(HANDLERS,))
    assert colleague.get(f"/api/v1/escalations/{owned['escalation']}/").status_code == 200
    assert colleague.get(f"/api/v1/cases/{owned['case']}/").status_code == 404


def test_lists_hold_only_what_the_caller_may_see(owned, other, intake, claim_generator):
    other_case = other.submit(claim_generator.claim("straight_through")).json()["id"]
    settle(other_case)

    assert [c["id"] for c in other.get("/api/v1/cases/").json()["results"]] == [other_case]
    assert other.get("/api/v1/escalations/").json()["results"] == []
    assert other.get("/api/v1/webhooks/deliveries/").json()["results"] == []
    assert {e["case_id"] for e in other.get("/api/v1/audit/events/").json()["results"]} <= {other_case, None}
    assert owned["case"] not in [c["id"] for c in other.get("/api/v1/cases/", limit=200).json()["results"]]
    assert {e["id"] for e in intake.get("/api/v1/escalations/").json()["results"]} == {owned["escalation"]}


def test_a_portal_user_sees_escalations_of_their_groups_only(owned, client, db):
    users = get_user_model()
    handler = users.objects.create_user("hana", password="x" * 12)
    handler.groups.add(Group.objects.get_or_create(name=HANDLERS)[0])
    investigator = users.objects.create_user("ivan", password="x" * 12)
    investigator.groups.add(Group.objects.get_or_create(name=SIU)[0])

    client.force_login(investigator)
    refused = [
        client.get(f"/api/v1/escalations/{owned['escalation']}/").status_code,
        client.get(f"/api/v1/cases/{owned['case']}/").status_code,
        client.post(
            f"/api/v1/escalations/{owned['escalation']}/resolve/",
            {"resolution": "approve", "note": "x"},
            content_type="application/json",
        ).status_code,
    ]
    client.force_login(handler)
    allowed = [
        client.get(f"/api/v1/escalations/{owned['escalation']}/").status_code,
        client.get(f"/api/v1/cases/{owned['case']}/").status_code,
    ]

    assert refused == [404, 404, 404]
    assert allowed == [200, 200]


def test_every_id_taking_api_route_is_in_the_table():
    from operations.api import urls

    taking_ids = {
        "/api/" + str(p.pattern).replace("<int:pk>", "{}") for p in urls.urlpatterns if "<int:pk>" in str(p.pattern)
    }
    listed = {
        url.replace("{case}", "{}")
        .replace("{escalation}", "{}")
        .replace("{subscription}", "{}")
        .replace("{delivery}", "{}")
        for _, url in ROUTES
    }
    assert taking_ids <= listed, sorted(taking_ids - listed)
