"""The claims pack's ML agents, rolled out as versions of the deterministic ones (``operations.agents.versions``):

- ``claims.assessment_ml`` estimates the payable amount with quantile gradient boosting; its confidence is the
  width of the 10–90% prediction interval mapped to 0..1, so governance's confidence limit means something;
- ``claims.fraud_ml`` routes approval like ``claims.approval`` but with a calibrated fraud probability.

Both serve the newest trained artifact, or the default model shipped in ``models/`` (trained on the synthetic history).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

from operations.agents import AgentContext, Proposal, agent
from operations.agents.ml import Trainer, current_model, fit_amount, fit_probability, matrix, register_trainer
from operations.packs.claims.agents import CENTS, REFER_CLAUSE, _decision, fraud_signals
from operations.packs.claims.history import FEATURES, claim_features, generate_history

MODELS_DIR = Path(__file__).parent / "models"
ASSESSMENT = "claims.assessment_ml"
FRAUD = "claims.fraud_ml"
REFER_AT = 0.35  # a calibrated fraud probability at or above this sends the claim to special investigations


# the hand-written fraud score of claims.approval, on model features: the naive baseline of the fraud model
def hand_score(features: dict) -> float:
    score = 0.5 * features["reused_documents"] + 0.15 * features["round_amount"]
    score += 0.25 * (features["days_since_start"] < 30) + 0.25 * (features["claims_last_year"] >= 3)
    return min(1.0, score)


def claims_training_rows(since: date | None) -> list[dict]:
    """Labelled rows from closed claims: the payable amount and the approval outcome people finally confirmed."""
    from operations.models import Case, CaseStatus

    qs = Case.objects.filter(workflow__key="claims", status__in=(CaseStatus.COMPLETED, CaseStatus.REJECTED))
    if since:
        qs = qs.filter(finished_at__date__gte=since)
    rows = []
    for payload, context in qs.values_list("payload", "context").iterator():
        decisions = context.get("decisions") or {}
        approval, assessment = decisions.get("approval"), decisions.get("assessment")
        if not approval or not assessment or "coverage_limit" not in context:
            continue
        fraud = approval.get("outcome") == "refer"
        amount = approval.get("amount") if approval.get("outcome") == "approve" else assessment.get("amount")
        rows.append(
            {
                "features": claim_features(payload, context),
                "payable": 0.0 if fraud else float(Decimal(str(amount or 0))),
                "fraud": fraud,
                "claim_type": payload["claim_type"],
                "closed_on": "",
            }
        )
    return rows


register_trainer(
    Trainer(
        key=ASSESSMENT,
        rows=claims_training_rows,
        synthetic=lambda n: generate_history(n),
        fit=lambda rows: fit_amount(rows, FEATURES),
        default_path=MODELS_DIR / "assessment_ml.joblib",
    )
)
register_trainer(
    Trainer(
        key=FRAUD,
        rows=claims_training_rows,
        synthetic=lambda n: generate_history(n),
        fit=lambda rows: fit_probability(rows, FEATURES, baseline_score=hand_score),
        default_path=MODELS_DIR / "fraud_ml.joblib",
    )
)


@agent(ASSESSMENT, version="ml", kind="ml", description="Estimates the payable amount with a trained model.")
def assessment_ml(ctx: AgentContext) -> Proposal:
    bundle, version = current_model(ASSESSMENT)
    model = bundle["model"]
    q = model.predict_quantiles(matrix([{"features": claim_features(ctx.payload, ctx.context)}], model.features))
    low, mid, high = float(q[0.1][0]), float(q[0.5][0]), float(q[0.9][0])
    limit, deductible = Decimal(ctx.context["coverage_limit"]), Decimal(ctx.context["deductible"])
    payable = max(Decimal(0), min(Decimal(str(mid)), limit - deductible)).quantize(CENTS)
    confidence = round(model.confidence(low, mid, high), 3)
    estimate = (payable + deductible).quantize(CENTS)
    return Proposal(
        outcome="assessed",
        action="estimate",
        amount=payable,
        confidence=confidence,
        rationale=f"model {version}: payable {payable} (80% interval {low:.0f}–{high:.0f})",
        data={
            "estimate": str(estimate),
            "payable": str(payable),
            "assessment_confidence": confidence,
            "assessment_model": version,
        },
    )


@agent(FRAUD, version="ml", kind="ml", description="Routes approval with a calibrated fraud probability.")
def fraud_ml(ctx: AgentContext) -> Proposal:
    bundle, version = current_model(FRAUD)
    model = bundle["model"]
    probability = float(
        model.predict_proba(matrix([{"features": claim_features(ctx.payload, ctx.context)}], FEATURES))[0, 1]
    )
    signals = sorted(fraud_signals(ctx))
    assessed = _decision(ctx, "assessment")
    payable = Decimal(assessed.get("amount") or ctx.context.get("payable") or 0)
    data = {"fraud_probability": round(probability, 4), "fraud_signals": signals, "fraud_model": version}
    if probability >= REFER_AT:
        return Proposal(
            outcome="refer",
            action="refer",
            amount=payable,
            confidence=round(probability, 3),
            rationale=f"fraud probability {probability:.2f} (model {version})",
            data={**data, "letter": "denial", "denial_clause": REFER_CLAUSE},
        )
    if payable <= 0:
        return Proposal(
            outcome="deny",
            action="deny",
            confidence=0.95,
            rationale="the payable amount after the deductible is nil",
            data={**data, "letter": "denial", "denial_clause": "Clause 4.2: the loss is within the deductible."},
        )
    human_assessed = assessed.get("decided_by", "").startswith("human")
    assessment_confidence = 0.9 if human_assessed else float(ctx.context.get("assessment_confidence", 0.9))
    return Proposal(
        outcome="approve",
        action="approve",
        amount=payable,
        confidence=round(min(assessment_confidence, 1 - probability), 3),
        rationale=f"payable {payable}, fraud probability {probability:.2f} (model {version})",
        data={**data, "letter": "approval"},
    )
