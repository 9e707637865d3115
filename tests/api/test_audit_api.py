import pytest

from audit.sealing import seal
from tests.helpers import settle

pytestmark = pytest.mark.django_db


def test_the_chain_status_reports_the_sealed_head_and_the_backlog(intake, claim_generator):
    settle(intake.submit(claim_generator.claim("straight_through")).json()["id"])
    before = intake.get("/api/v1/audit/chain/").json()
    assert before["unsealed_backlog"] > 0

    seal()

    after = intake.get("/api/v1/audit/chain/").json()
    assert after["unsealed_backlog"] == 0
    assert after["sealed_up_to"] == before["unsealed_backlog"] + (before["sealed_up_to"] or 0)
    assert len(after["head_hash"]) == 64


def test_the_dossier_holds_the_cases_events_with_their_proof_and_only_for_the_caller(intake, other, claim_generator):
    case_id = intake.submit(claim_generator.claim("straight_through")).json()["id"]
    settle(case_id)
    seal()

    dossier = intake.get(f"/api/v1/cases/{case_id}/dossier/")

    assert dossier.status_code == 200
    body = dossier.json()
    actions = [e["action"] for e in body["events"]]
    assert actions[0] == "case.submitted" and "case.completed" in actions
    assert all(len(e["proof"]["hash"]) == 64 and e["proof"]["seal_seq"] for e in body["events"])
    # another client's id is the same 404 as an absent one (OWASP API1)
    assert other.get(f"/api/v1/cases/{case_id}/dossier/").status_code == 404
    assert intake.get("/api/v1/cases/999999/dossier/").status_code == 404


def test_audit_endpoints_need_the_audit_scope(make_caller, claim_generator):
    reader = make_caller("no-audit", scopes=["cases:read", "cases:write"])
    case_id = reader.submit(claim_generator.claim("straight_through")).json()["id"]
    assert reader.get("/api/v1/audit/chain/").status_code == 403
    assert reader.get(f"/api/v1/cases/{case_id}/dossier/").status_code == 403
