"""The portal's agents page: versions with replay results beside the live one, rollout in one click."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.agents import versions
from operations.models import AgentVersion, AgentVersionStatus
from tests.helpers import settle, submit


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("gov", "gov@example.com", "pw")


def test_agents_page_shows_versions_with_replay_beside_the_code_default(client, admin_user, claim_generator):
    cases = [submit(claim_generator.claim("straight_through")) for _ in range(3)]
    settle(*[c.pk for c in cases])
    versions.agent_version_register(
        agent_key="claims.assessment", version="ml-1", kind="ml", source="claims.assessment_ml", actor=Actor.system("t")
    )
    client.force_login(admin_user)
    # when the admin replays the version from the page
    response = client.post(
        reverse("portal:agent-version-action", args=["claims.assessment", "ml-1", "replay"]), {"last": "10"}
    )
    assert response.status_code == 302
    page = client.get(reverse("portal:agents")).content.decode()
    # then the page lists the code default (with its live record) and the replayed version with its numbers
    assert "1 (code default)" in page and "ml-1" in page
    row = AgentVersion.objects.get(version="ml-1")
    assert row.replay["cases"] == 3 and row.status == AgentVersionStatus.REPLAYING
    assert row.replay["agreement"] == 1.0 and "100%" in page  # every replayed outcome agreed ("assessed")
    assert 'id="agent-stats"' in page and "claims.intake" in page


def test_canary_and_promote_in_one_click_each_audited_as_the_user(client, admin_user, claims_workflow):
    row = versions.agent_version_register(
        agent_key="claims.intake", version="2", kind="code", source="claims.intake", actor=Actor.system("t")
    )
    AgentVersion.objects.filter(pk=row.pk).update(replay={"cases": 0})
    client.force_login(admin_user)
    url = lambda action: reverse("portal:agent-version-action", args=["claims.intake", "2", action])  # noqa: E731
    client.post(url("canary"), {"share": "0.2"})
    row.refresh_from_db()
    assert (row.status, row.canary_share) == (AgentVersionStatus.CANARY, Decimal("0.200"))
    client.post(url("promote"))
    row.refresh_from_db()
    assert row.status == AgentVersionStatus.LIVE
    event = AuditEvent.objects.filter(action=AuditAction.AGENT_VERSION_CHANGED).order_by("-id").first()
    assert (event.actor_label, event.data["to"]) == ("gov", "live")


def test_people_without_rollout_permission_cannot_change_versions(client, claims_workflow):
    user = get_user_model().objects.create_user("handler", password="pw")
    client.force_login(user)
    row = versions.agent_version_register(agent_key="claims.intake", version="2", kind="code", actor=Actor.system("t"))
    response = client.post(reverse("portal:agent-version-action", args=["claims.intake", "2", "replay"]))
    assert response.status_code == 403
    row.refresh_from_db()
    assert row.replay == {} and row.status == AgentVersionStatus.DRAFT
    assert client.get(reverse("portal:agents")).status_code == 200
