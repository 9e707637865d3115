"""Object-level access: every id-taking URL of the portal (and its governance and audit pages), for supervisors of
another queue, queue members without a role, auditors, people with neither role nor queue, anonymous visitors; and
role separation (a supervisor cannot change governance, an auditor cannot act).

To cover a new route, add a row to ROUTES: its name, how to build its kwargs from an escalation, the method, and what
each kind of user must get."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from audit.actors import Actor
from audit.models import AuditEvent
from governance.models import AgentPolicy, QAReview, QAStatus
from operations import engine, roles
from operations.agents import versions
from operations.models import AgentVersion, AgentVersionStatus, Escalation, EscalationStatus
from operations.services import escalation_resolve
from tests.helpers import make_user, submit

pytestmark = pytest.mark.django_db
ROLLOUT = {"agent_key": "claims.intake", "version": "2", "action": "replay"}


@dataclass(frozen=True)
class Route:
    name: str
    kwargs: object  # (escalation) -> dict
    method: str = "get"
    data: dict | None = None
    # a supervisor of the *other* queue: 404 (it does not exist for them), 200 (by design) or 403 (not their role)
    foreign_status: int = 404
    # a supervisor of the item's own queue (GET routes only: a POST would act)
    own_status: int = 200
    # an auditor: reads every queue, acts on nothing
    reader_status: int = 200
    # signed in, with neither a portal role nor a queue
    outsider_status: int = 404


# Refusals of a role (403) come before the object is looked up, so they say nothing about whether the id exists.
ESCALATION_POST = {"foreign_status": 404, "reader_status": 403, "outsider_status": 403}
ROLE_ONLY_POST = {"foreign_status": 403, "reader_status": 403, "outsider_status": 403}
AUDITORS_ONLY_GET = {"foreign_status": 403, "own_status": 403, "reader_status": 200, "outsider_status": 403}
RESOLVE = {"resolution": "reject", "reason_code": "not_covered", "note": "mine now"}  # valid: it would act

ROUTES = [
    Route("portal:escalation", lambda e: {"pk": e.pk}),
    Route("portal:escalation-resolve", lambda e: {"pk": e.pk}, "post", RESOLVE, **ESCALATION_POST),
    Route("portal:escalation-claim", lambda e: {"pk": e.pk}, "post", **ESCALATION_POST),
    Route("portal:escalation-release", lambda e: {"pk": e.pk}, "post", **ESCALATION_POST),
    # operations staff (any portal role) read every case; the escalations on it stay queue-scoped (tested below)
    Route("portal:case", lambda e: {"pk": e.case_id}, foreign_status=200),
    # rollouts are not queue-scoped: only holders of operations.change_agentversion (and superusers) change them
    Route("portal:agent-version-action", lambda e: ROLLOUT, "post", **ROLE_ONLY_POST),
    Route("governance:promote", lambda e: {"agent_key": "claims.approval"}, "post", {"note": "n"}, **ROLE_ONLY_POST),
    Route(
        "governance:qa-decide",
        lambda e: {"pk": QAReview.objects.get(case_id=e.case_id).pk},
        "post",
        {"agreed": "1", "note": "n"},
        **ROLE_ONLY_POST,
    ),
    Route("audit:dossier", lambda e: {"case_id": e.case_id}, **AUDITORS_ONLY_GET),
    Route("audit:dossier-json", lambda e: {"case_id": e.case_id}, **AUDITORS_ONLY_GET),
]
SCANNED_NAMESPACES = ("portal", "governance", "audit")


@pytest.fixture
def world(claim_generator):
    """Two escalations in two queues (handlers and special investigations), a QA review on each case, a draft agent
    version, and the people: a supervisor of each queue, a member of the handlers queue without a role, an auditor
    (no queue) and a signed-in user with neither role nor queue."""
    handlers_case = submit(claim_generator.claim("over_limit"))
    siu_case = submit(claim_generator.claim("fraud_signals"))
    engine.advance_case(handlers_case.pk)
    engine.advance_case(siu_case.pk)
    a = Escalation.objects.get(case=handlers_case)
    b = Escalation.objects.get(case=siu_case)
    assert a.queue != b.queue
    for e in (a, b):
        QAReview.objects.create(agent_key="claims.approval", case_id=e.case_id, step_key=e.step.key)
    versions.agent_version_register(agent_key="claims.intake", version="2", kind="code", actor=Actor.system("t"))
    users = {
        "alice": make_user("alice", roles.SUPERVISOR, a.queue),
        "bob": make_user("bob", roles.SUPERVISOR, b.queue),
        "quinn": make_user("quinn", a.queue),
        "audrey": make_user("audrey", roles.AUDITOR),
        "nora": make_user("nora"),
    }
    return a, b, users


def _client(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _call(client, route: Route, escalation):
    url = reverse(route.name, kwargs=route.kwargs(escalation))
    return getattr(client, route.method)(url, route.data or {})


def _nothing_changed(events_before: int) -> bool:
    escalations = Escalation.objects.all()
    rollout = AgentVersion.objects.get(agent_key="claims.intake", version="2")
    return (
        all(e.status == EscalationStatus.OPEN and not e.claimed_by_id and not e.pending_approval for e in escalations)
        and not QAReview.objects.exclude(status=QAStatus.OPEN).exists()
        and (rollout.status, rollout.replay) == (AgentVersionStatus.DRAFT, {})
        and AuditEvent.objects.count() == events_before
    )


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_a_supervisor_of_queue_a_gets_404_on_queue_b_items(world, route):
    a, b, users = world
    events = AuditEvent.objects.count()

    response = _call(_client(users["alice"]), route, b)

    assert response.status_code == route.foreign_status
    assert _nothing_changed(events)


@pytest.mark.parametrize("route", [r for r in ROUTES if r.method == "get"], ids=lambda r: r.name)
def test_a_supervisor_sees_their_own_queue_items(world, route):
    a, b, users = world
    assert _call(_client(users["alice"]), route, a).status_code == route.own_status
    assert _call(_client(users["bob"]), route, b).status_code == route.own_status


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_anonymous_visitors_are_sent_to_log_in(world, route):
    a, _, _ = world
    response = _call(_client(), route, a)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_an_auditor_reads_every_queue_and_acts_on_nothing(world, route):
    # The role model made auditors read-all (before it, an auditor without a queue saw nothing): a 200 on reads of
    # both queues, a 403 on every action, and nothing changes.
    a, b, users = world
    events = AuditEvent.objects.count()
    for escalation in (a, b):
        assert _call(_client(users["audrey"]), route, escalation).status_code == route.reader_status
    assert _nothing_changed(events)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_a_user_with_neither_role_nor_queue_cannot_see_or_act_on_anything(world, route):
    a, b, users = world
    events = AuditEvent.objects.count()
    for escalation in (a, b):
        assert _call(_client(users["nora"]), route, escalation).status_code == route.outsider_status
    assert _nothing_changed(events)


def test_a_queue_member_without_a_role_sees_their_queue_and_its_cases_only_and_cannot_act(world):
    a, b, users = world
    client = _client(users["quinn"])
    events = AuditEvent.objects.count()

    def get(name, **kwargs):
        return client.get(reverse(name, kwargs=kwargs)).status_code

    assert (get("portal:escalation", pk=a.pk), get("portal:case", pk=a.case_id)) == (200, 200)
    assert (get("portal:escalation", pk=b.pk), get("portal:case", pk=b.case_id)) == (404, 404)
    assert client.post(reverse("portal:escalation-resolve", kwargs={"pk": a.pk}), RESOLVE).status_code == 403
    assert client.post(reverse("portal:escalation-claim", kwargs={"pk": a.pk})).status_code == 403
    assert _nothing_changed(events)


def _resolve_with_a_queue_only_note(escalation, user) -> None:
    escalation_resolve(
        escalation_id=escalation.pk,
        actor=Actor.user(user),
        resolution="reject",
        reason_code="fraud_suspected",
        note="SIU-ONLY: claimant linked to ring 7",
    )


def test_a_case_page_shows_another_queues_case_but_not_its_escalations(world):
    # given the investigations supervisor resolved their escalation with a note meant for their queue
    a, b, users = world
    _resolve_with_a_queue_only_note(b, users["bob"])

    # when the handlers supervisor opens that case
    response = _client(users["alice"]).get(reverse("portal:case", kwargs={"pk": b.case_id}))

    # then they read the case, but neither the escalation nor what the investigator wrote on it
    assert response.status_code == 200
    page = response.content.decode()
    assert reverse("portal:escalation", kwargs={"pk": b.pk}) not in page
    assert "SIU-ONLY" not in page


def test_the_case_timeline_api_does_not_carry_another_queues_escalation_notes(world):
    # the same, through the API with the portal session: the escalation is a 404, its note must not come with the case
    a, b, users = world
    _resolve_with_a_queue_only_note(b, users["bob"])
    client = _client(users["alice"])

    timeline = client.get(reverse("api:case-timeline", kwargs={"pk": b.case_id}))

    assert client.get(reverse("api:escalation", kwargs={"pk": b.pk})).status_code == 404
    assert timeline.status_code == 200 and "SIU-ONLY" not in timeline.content.decode()


def test_every_portal_route_taking_an_id_is_in_the_table():
    from django.urls import URLPattern, get_resolver

    resolver = get_resolver()
    names = set()
    for pattern in resolver.url_patterns:
        namespace = getattr(pattern, "namespace", "")
        for sub in getattr(pattern, "url_patterns", []):
            if isinstance(sub, URLPattern) and sub.pattern.converters and namespace in SCANNED_NAMESPACES:
                names.add(f"{namespace}:{sub.name}")
    assert {"portal:escalation", "governance:qa-decide", "audit:dossier"} <= names, "the route scan missed routes"
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
