"""Object-level access: every portal URL that takes an id, for users of another queue, people without a queue,
anonymous visitors; and role separation (a supervisor cannot change governance, an auditor cannot act).

To cover a new route, add a row to ROUTES: its name, how to build its kwargs from the two escalations, the method,
and what a user of the *other* queue must get."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from governance.models import AgentPolicy
from operations import engine
from operations.models import Escalation, EscalationStatus
from tests.helpers import submit

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Route:
    name: str
    kwargs: object  # (escalation) -> dict
    method: str = "get"
    data: dict | None = None
    # what a signed-in user outside the item's queue gets: 404 (it does not exist for them) or 200 (by design)
    foreign_status: int = 404


ROUTES = [
    Route("portal:escalation", lambda e: {"pk": e.pk}),
    Route("portal:escalation-resolve", lambda e: {"pk": e.pk}, "post", {"resolution": "approve", "note": "mine now"}),
    # cases carry no queue: every signed-in supervisor may read any case (the portal's design today)
    Route("portal:case", lambda e: {"pk": e.case_id}, foreign_status=200),
]


@pytest.fixture
def world(claim_generator, django_user_model):
    """Two escalations in two queues (handlers and special investigations) and a user in each, plus an auditor who
    belongs to no queue."""
    handlers_case = submit(claim_generator.claim("over_limit"))
    siu_case = submit(claim_generator.claim("fraud_signals"))
    engine.advance_case(handlers_case.pk)
    engine.advance_case(siu_case.pk)
    a = Escalation.objects.get(case=handlers_case)
    b = Escalation.objects.get(case=siu_case)
    assert a.queue != b.queue
    users = {}
    for name, queue in (("alice", a.queue), ("bob", b.queue), ("audrey", None)):
        users[name] = django_user_model.objects.create_user(name, password=PASSWORD)
        if queue:
            users[name].groups.add(Group.objects.get_or_create(name=queue)[0])
    return a, b, users


def _client(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _call(client, route: Route, escalation):
    url = reverse(route.name, kwargs=route.kwargs(escalation))
    return getattr(client, route.method)(url, route.data or {})


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_a_user_of_queue_a_gets_404_on_queue_b_items(world, route):
    a, b, users = world
    events = AuditEvent.objects.count()

    response = _call(_client(users["alice"]), route, b)

    assert response.status_code == route.foreign_status
    b.refresh_from_db()
    assert b.status == EscalationStatus.OPEN and AuditEvent.objects.count() == events


@pytest.mark.parametrize("route", [r for r in ROUTES if r.method == "get"], ids=lambda r: r.name)
def test_a_user_sees_their_own_queue_items(world, route):
    a, b, users = world
    assert _call(_client(users["alice"]), route, a).status_code == 200
    assert _call(_client(users["bob"]), route, b).status_code == 200


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_anonymous_visitors_are_sent_to_log_in(world, route):
    a, _, _ = world
    response = _call(_client(), route, a)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("route", [r for r in ROUTES if r.foreign_status == 404], ids=lambda r: r.name)
def test_an_auditor_without_a_queue_cannot_see_or_act_on_any_escalation(world, route):
    a, b, users = world
    for escalation in (a, b):
        assert _call(_client(users["audrey"]), route, escalation).status_code == 404
    assert Escalation.objects.filter(status=EscalationStatus.OPEN).count() == 2


def test_every_portal_route_taking_an_id_is_in_the_table():
    from django.urls import URLPattern, get_resolver

    resolver = get_resolver()
    names = set()
    for pattern in resolver.url_patterns:
        for sub in getattr(pattern, "url_patterns", []):
            if isinstance(sub, URLPattern) and sub.pattern.converters and getattr(pattern, "namespace", "") == "portal":
                names.add(f"portal:{sub.name}")
    assert "portal:escalation" in names, "the route scan found nothing: it would pass vacuously"
    assert names <= {r.name for r in ROUTES}, f"add these routes to ROUTES: {sorted(names - {r.name for r in ROUTES})}"


def test_a_supervisor_cannot_change_governance_in_the_admin(world, django_user_model):
    # given a supervisor (a queue member, even one given staff access) and a published policy
    a, _, users = world
    policy = AgentPolicy.objects.get(agent_key="claims.approval")
    alice = users["alice"]

    # when they post a change to the policy, first as a plain supervisor, then with staff access but no permission
    url = f"/admin/governance/agentpolicy/{policy.pk}/change/"
    plain = _client(alice).post(url, {"name": "anything goes"})
    alice.is_staff = True
    alice.save()
    staff = _client(alice).post(url, {"name": "anything goes"})
    stop = _client(alice).post("/admin/governance/stopswitch/add/", {"scope": "global"})

    # then the admin sends the first to its login and refuses the others, and nothing changed
    assert plain.status_code == 302 and "/admin/login/" in plain["Location"]
    assert staff.status_code == 403 and stop.status_code == 403
    policy.refresh_from_db()
    assert policy.name != "anything goes"


def test_an_auditor_with_view_permissions_can_read_governance_but_not_change_it(world):
    _, _, users = world
    audrey = users["audrey"]
    audrey.is_staff = True
    audrey.save()
    audrey.user_permissions.add(*Permission.objects.filter(codename__in=["view_agentpolicy", "view_stopswitch"]))
    policy = AgentPolicy.objects.get(agent_key="claims.approval")
    client = _client(audrey)
    url = f"/admin/governance/agentpolicy/{policy.pk}/change/"

    assert client.get(url).status_code == 200
    assert client.post(url, {"name": "audited away"}).status_code == 403
    policy.refresh_from_db()
    assert policy.name != "audited away"
