import pytest
from django.contrib.auth import get_user_model

from audit.actors import Actor
from audit.chain import link
from audit.dossier import CaseNotFound, case_dossier, event_canonical
from audit.models import AuditAction
from audit.sealing import seal
from governance.services import stop_engage, stop_release
from operations.models import Escalation, Resolution
from operations.services import escalation_resolve
from tests.helpers import senior_user, settle, submit

pytestmark = pytest.mark.django_db


def test_dossier_holds_the_cases_story_with_stop_switch_events_and_a_verifiable_proof(
    claim_generator, django_capture_on_commit_callbacks
):
    # given a case parked by a global stop, resumed when it is released, escalated, and resolved by a person
    sam = Actor.user(senior_user("sam"))
    other = submit(claim_generator.claim("straight_through"))
    stop_engage(scope="global", reason="incident 7", actor=sam)
    case = submit(claim_generator.claim("over_limit"))
    settle(case.pk, other.pk)
    with django_capture_on_commit_callbacks(execute=True):  # the release resumes parked cases after its commit
        stop_release(scope="global", reason="incident 7 over", actor=sam)
    settle(case.pk, other.pk)
    escalation = Escalation.objects.get(case=case)
    escalation_resolve(escalation_id=escalation.pk, actor=sam, resolution=Resolution.REJECT, note="not covered")
    seal()

    # when the dossier is built
    dossier = case_dossier(case.pk)

    # then it tells the case's story in order, includes the stop flips that parked it, and nothing of the other case
    actions = [e["action"] for e in dossier["events"]]
    for expected in (
        AuditAction.CASE_SUBMITTED,
        AuditAction.STOP_ENGAGED,
        AuditAction.CASE_PARKED,
        AuditAction.STOP_RELEASED,
        AuditAction.CASE_RESUMED,
        AuditAction.STEP_DECIDED,
        AuditAction.ESCALATION_OPENED,
        AuditAction.ESCALATION_RESOLVED,
    ):
        assert expected in actions, expected
    assert actions.index(AuditAction.STOP_ENGAGED) < actions.index(AuditAction.CASE_PARKED)
    assert all(e["case_id"] in (case.pk, None) for e in dossier["events"])
    assert dossier["case"]["reference"] == case.reference and dossier["unsealed"] == 0
    resolved = next(e for e in dossier["events"] if e["action"] == AuditAction.ESCALATION_RESOLVED)
    assert resolved["actor"]["label"] == "sam" and resolved["data"]["note"] == "not covered"
    decided = next(e for e in dossier["events"] if e["action"] == AuditAction.STEP_DECIDED)
    assert "policy_version" in decided["data"]["verdict"]

    # and each event's hash recomputes from its predecessor's hash and its canonical form
    for entry in dossier["events"]:
        assert link(entry["proof"]["prev_hash"], event_canonical(entry)) == entry["proof"]["hash"]
    assert dossier["chain"]["head_digest"]["seq"] >= max(e["proof"]["seal_seq"] for e in dossier["events"])


def test_dossier_of_an_unknown_case_is_not_found(db):
    with pytest.raises(CaseNotFound):
        case_dossier(987654)


def test_dossier_pages_json_and_printable_html(client, claim_generator):
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    seal()
    client.force_login(get_user_model().objects.create_superuser("root", password="x" * 12))
    data = client.get(f"/audit/cases/{case.pk}/dossier.json").json()
    assert data["case"]["id"] == case.pk and data["events"][0]["action"] == AuditAction.CASE_SUBMITTED
    page = client.get(f"/audit/cases/{case.pk}/dossier/").content.decode()
    assert case.reference in page and data["events"][-1]["proof"]["hash"] in page
    assert "&quot;workflow&quot;: &quot;claims&quot;" in page  # the data, as indented JSON
    assert client.get("/audit/cases/987654/dossier.json").status_code == 404
