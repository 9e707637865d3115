import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from audit.sealing import seal
from audit.verification import verify
from tests.audit.conftest import record

pytestmark = pytest.mark.django_db


@pytest.fixture
def auditor(client):
    user = get_user_model().objects.create_user("alice", password="x" * 12)
    user.groups.add(Group.objects.get_or_create(name="Auditor")[0])
    client.force_login(user)
    return user


def test_audit_pages_need_login_and_the_auditor_group(client):
    assert client.get("/audit/").status_code == 302  # to the login page
    client.force_login(get_user_model().objects.create_user("bob", password="x" * 12))
    for url in ("/audit/", "/audit/events/", "/audit/cases/1/dossier.json", "/audit/cases/1/dossier/"):
        assert client.get(url).status_code == 403, url


def test_a_superuser_sees_the_status_panel(client):
    client.force_login(get_user_model().objects.create_superuser("root", password="x" * 12))
    assert client.get("/audit/").status_code == 200


def test_status_panel_shows_head_backlog_and_last_verification(client, auditor):
    record(3)
    seal()
    record(2)
    verify()
    page = client.get("/audit/").content.decode()
    assert "#3" in page and AuditEvent.objects.get(seal_seq=3).hash in page
    assert "2 events" in page and "chain intact" in page


def test_event_browser_filters_and_pages_by_keyset(client, auditor):
    # given 60 events of one kind and 5 by another actor
    record(60)
    record(5, subject_type="other.thing", subject_label="odd one")
    from audit.actors import Actor
    from audit.services import audit_record

    audit_record(actor=Actor.system("nightly"), action="policy.changed", subject_type="x", subject_id="9")

    # when filtering by actor, action, subject
    by_actor = client.get("/audit/events/", {"actor": "nightly"})
    assert by_actor.context["page"].events[0].actor_id == "nightly" and len(by_actor.context["page"].events) == 1
    by_subject = client.get("/audit/events/", {"subject_type": "other.thing"})
    assert len(by_subject.context["page"].events) == 5
    by_action = client.get("/audit/events/", {"action": "policy.changed"})
    assert [e.subject_id for e in by_action.context["page"].events] == ["9"]
    empty = client.get("/audit/events/", {"occurred_before": "2000-01-01T00:00:00Z"})
    assert empty.context["page"].events == []

    # then the unfiltered list pages newest first with an id cursor, no overlap and nothing lost
    first = client.get("/audit/events/", {"subject_type": "test.thing"}).context["page"]
    assert len(first.events) == 50 and first.before == first.events[-1].pk
    second = client.get("/audit/events/", {"subject_type": "test.thing", "before": first.before}).context["page"]
    assert len(second.events) == 10 and second.before is None
    ids = [e.pk for e in first.events + second.events]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 60


def test_the_admin_is_read_only_even_for_a_superuser(client):
    # given a superuser and an event
    client.force_login(get_user_model().objects.create_superuser("root", password="x" * 12))
    event = record()[0]

    # then the list and the event can be viewed, but not added, changed or deleted
    assert client.get("/admin/audit/auditevent/").status_code == 200
    detail = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "case.completed"}).status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = client.post(
        "/admin/audit/auditevent/", {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)
    assert AuditEvent.objects.filter(pk=event.pk, action=event.action).exists()


def test_the_event_browser_takes_any_valid_offset_and_refuses_an_unrepresentable_time(client, auditor):
    record(3)

    far_offset = client.get("/audit/events/", {"occurred_after": "2001-06-09T14:57:39-21:30"})
    beyond = client.get("/audit/events/", {"occurred_after": "9999-12-31T23:00:00-21:30"})

    assert far_offset.status_code == 200 and len(far_offset.context["page"].events) == 3
    assert beyond.status_code in (200, 400) and not beyond.context["page"].events
