"""ML agents: training on the synthetic history beats naive baselines on the holdout; artifacts are versioned; the
agents' confidence comes from the model."""

from decimal import Decimal

import numpy as np
import pytest
from django.core.management import call_command
from threadpoolctl import threadpool_limits

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.agents import AgentContext, get_agent, versions
from operations.agents.ml import current_model, digest, fit_amount, fit_probability, pinned, train_agent
from operations.models import AgentVersion, ModelArtifact
from operations.packs.claims.history import FEATURES, generate_history
from operations.packs.claims.ml import claims_training_rows, hand_score
from tests.helpers import settle, submit

ROWS = 2000


@pytest.fixture(scope="module")
def history():
    return generate_history(ROWS)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def test_the_synthetic_history_is_deterministic_with_a_few_percent_fraud(history):
    assert digest(generate_history(ROWS)) == digest(history)
    assert digest(generate_history(ROWS, seed=1)) != digest(history)
    fraud_share = sum(r["fraud"] for r in history) / ROWS
    assert 0.015 < fraud_share < 0.06
    assert all(r["payable"] == 0 for r in history if r["fraud"])
    assert set(history[0]["features"]) == set(FEATURES)


def test_the_amount_model_beats_the_median_by_claim_type_on_the_holdout(history):
    model, metrics = fit_amount(history[:1200], FEATURES)
    assert metrics["mae"] < metrics["baseline_mae"] * 0.5, metrics
    assert 0.6 < metrics["interval_10_90_coverage"] < 0.95  # the 10-90% interval roughly holds 80%
    # a claim like many others gets a narrow interval; one far outside the history a wide one
    q = model.predict_quantiles(np.array([[r["features"][f] for f in FEATURES] for r in history[:200]]))
    confidences = [model.confidence(lo, mi, hi) for lo, mi, hi in zip(q[0.1], q[0.5], q[0.9], strict=True)]
    assert 0 <= min(confidences) <= max(confidences) <= 1 and max(confidences) - min(confidences) > 0.1


def test_the_fraud_model_beats_the_hand_score_and_the_base_rate(history):
    model, metrics = fit_probability(history, FEATURES, baseline_score=hand_score)
    assert metrics["auc"] > metrics["baseline_auc"], metrics
    assert metrics["brier"] < metrics["baseline_brier"], metrics
    assert sum(b["n"] for b in metrics["reliability"]) == metrics["holdout_rows"]
    assert 0 < model.predict_proba([[history[0]["features"][f] for f in FEATURES]])[0, 1] < 1


def test_train_agent_stores_a_versioned_artifact_that_then_serves_the_agent(db, tmp_path, settings, capsys):
    # given no trained model: the shipped default serves
    settings.SELFOPS_MODELS_DIR = tmp_path
    _, version = current_model("claims.fraud_ml")
    assert version == "default"
    # when the command trains on 1500 rows of synthetic history (no closed cases yet)
    call_command("train_agent", "claims.fraud_ml", "--synthetic", "1500")
    # then the artifact is recorded with its digest and metrics, audited, and serves from now on
    artifact = ModelArtifact.objects.get(agent_key="claims.fraud_ml")
    assert artifact.training_rows == 1500
    assert artifact.training_digest == digest(generate_history(1500))
    assert artifact.metrics["auc"] > artifact.metrics["baseline_auc"]
    assert (tmp_path / f"claims.fraud_ml-{artifact.version}.joblib").exists()
    assert AuditEvent.objects.filter(action=AuditAction.MODEL_TRAINED).count() == 1
    assert current_model("claims.fraud_ml")[1] == artifact.version
    out = capsys.readouterr().out
    assert "auc:" in out and "baseline_auc:" in out and "reliability" in out
    # and an agent version that names its model keeps it when newer ones are trained
    which = lambda ctx: current_model("claims.fraud_ml")[1]  # noqa: E731
    assert pinned(which, "claims.fraud_ml", "default")(None) == "default"
    assert pinned(which, "claims.fraud_ml", artifact.version)(None) == artifact.version
    with pytest.raises(LookupError):
        pinned(which, "claims.fraud_ml", "no-such-version")(None)
    row = AgentVersion(agent_key="claims.approval", version="f1", kind="ml", source="claims.fraud_ml@default")
    assert versions.implementation(row).fn is not get_agent("claims.fraud_ml").fn


def test_training_reads_human_confirmed_outcomes_of_closed_cases(claim_generator, tmp_path, settings):
    settings.SELFOPS_MODELS_DIR = tmp_path
    cases = [submit(claim_generator.claim(s)) for s in ["straight_through"] * 3 + ["fraud_signals", "not_covered"]]
    settle(*[c.pk for c in cases])
    rows = claims_training_rows(None)
    assert len(rows) == 3  # the fraud referral still waits on a person, the uncovered claim never got assessed
    assert all(r["payable"] > 0 and not r["fraud"] for r in rows)
    artifact = train_agent(agent_key="claims.fraud_ml", actor=Actor.system("test"), synthetic=1000)
    assert artifact.metrics["closed_case_rows"] == 3 and artifact.training_rows == 1003


def test_the_ml_agents_propose_with_model_confidence(claims_workflow):
    ctx = AgentContext(
        case_id=1,
        reference="T-1",
        workflow_key="claims",
        step_key="assessment",
        attempt=1,
        payload={
            "claim_type": "auto_collision",
            "amount_claimed": "3210.00",
            "loss_date": "2026-01-20",
            "documents": [{}, {}],
            "other_party": False,
        },
        context={"coverage_limit": "30000", "deductible": "500", "policy_start": "2025-06-01", "claims_last_year": 0},
    )
    assessed = get_agent("claims.assessment_ml").fn(ctx)
    assert assessed.outcome == "assessed" and Decimal(1500) < assessed.amount < Decimal(3300)
    assert 0 < assessed.confidence < 1
    approved = get_agent("claims.fraud_ml").fn(
        AgentContext(**{**ctx.__dict__, "step_key": "approval", "context": {**ctx.context, **assessed.data}})
    )
    assert approved.outcome == "approve" and approved.data["fraud_probability"] < 0.35
    suspicious = get_agent("claims.fraud_ml").fn(
        AgentContext(
            **{
                **ctx.__dict__,
                "payload": {**ctx.payload, "amount_claimed": "9000.00"},
                "context": {
                    **ctx.context,
                    **assessed.data,
                    "policy_start": "2026-01-05",
                    "claims_last_year": 4,
                    "reused_documents": ["abc"],
                },
            }
        )
    )
    assert suspicious.outcome == "refer" and suspicious.confidence >= 0.35
