"""A year of closed claims with human-confirmed outcomes and amounts, for training the claims pack's ML agents on a
fresh machine. Deterministic for a seed. A few percent are fraudulent; their signals (re-used documents, a claim
soon after the policy started, round amounts, frequent claimants, amounts far above the loss) are learnable but
noisy: honest claims show them too, and fraud often shows none.

Each row holds the same fields that ``claim_features`` reads from a real case, so a model trained here serves real
cases, and training on real closed cases (``claims_training_rows``) yields rows of the same shape.
"""

from __future__ import annotations

import math
import random
from datetime import date, timedelta
from decimal import Decimal

from operations.packs.claims.agents import TYPICAL_RANGE
from operations.packs.claims.data import PRODUCTS

HISTORY_SEED = 20250101
TYPE_SHARES = {
    "auto_collision": 40,
    "auto_glass": 15,
    "home_water": 15,
    "home_theft": 8,
    "travel": 12,
    "liability": 10,
}
MEDIAN_LOSS = {
    "auto_collision": 3000,
    "auto_glass": 450,
    "home_water": 6000,
    "home_theft": 3500,
    "travel": 500,
    "liability": 15000,
}
FRAUD_RATE = {"home_theft": 0.09, "auto_collision": 0.04, "liability": 0.03}
DEFAULT_FRAUD_RATE = 0.02
TERMS = {peril: terms for _, _, perils, _ in PRODUCTS.values() for peril, terms in perils.items()}
CLAIM_TYPES = list(TYPE_SHARES)


def claim_features(payload: dict, context: dict) -> dict:
    """The model inputs of a claim, from its payload and the context its earlier steps added."""
    claim_type = payload["claim_type"]
    claimed = float(Decimal(str(payload["amount_claimed"])))
    limit = float(Decimal(str(context.get("coverage_limit") or TERMS.get(claim_type, (claimed, 0))[0])))
    deductible = float(Decimal(str(context.get("deductible") or 0)))
    start = context.get("policy_start")
    days = (date.fromisoformat(payload["loss_date"]) - date.fromisoformat(start)).days if start else 365
    high = float(TYPICAL_RANGE[claim_type][1])
    row = {f"type_{t}": 1.0 if claim_type == t else 0.0 for t in CLAIM_TYPES}
    row.update(
        log_claimed=math.log1p(claimed),
        claimed_over_typical=claimed / high,
        log_limit=math.log1p(limit),
        deductible_share=min(deductible / claimed, 5.0) if claimed > 0 else 5.0,
        days_since_start=float(min(max(days, 0), 400)),
        claims_last_year=float(context.get("claims_last_year") or 0),
        reused_documents=1.0 if context.get("reused_documents") else 0.0,
        round_amount=1.0 if claimed >= 1000 and claimed % 500 == 0 else 0.0,
        other_party=1.0 if payload.get("other_party") else 0.0,
        n_documents=float(len(payload.get("documents") or [])),
    )
    return row


FEATURES = list(claim_features({"claim_type": "travel", "amount_claimed": "1", "loss_date": "2025-01-01"}, {}))


def generate_history(n: int, *, seed: int = HISTORY_SEED, today: date | None = None) -> list[dict]:
    """``n`` closed claims: ``{"features", "payable", "fraud", "claim_type", "closed_on"}``; ``payable`` is the
    amount a person confirmed (0 for fraud, which was denied)."""
    today = today or date(2026, 1, 1)
    rng = random.Random(seed)
    types, weights = CLAIM_TYPES, [TYPE_SHARES[t] for t in CLAIM_TYPES]
    rows = []
    for _ in range(n):
        claim_type = rng.choices(types, weights)[0]
        limit, deductible = TERMS[claim_type]
        fraud = rng.random() < FRAUD_RATE.get(claim_type, DEFAULT_FRAUD_RATE)
        low, high = TYPICAL_RANGE[claim_type]
        loss = math.exp(rng.gauss(math.log(MEDIAN_LOSS[claim_type]), 0.6))
        loss = min(max(loss, float(low) * 0.5), float(high) * 1.5)
        claimed = loss * (rng.uniform(1.6, 3.0) if fraud else rng.uniform(1.0, 1.25))
        if rng.random() < (0.45 if fraud else 0.05) and claimed >= 1000:
            claimed = round(claimed / 500) * 500
        claimed = round(claimed, 2)
        days = rng.randint(3, 29) if rng.random() < (0.45 if fraud else 0.07) else rng.randint(30, 360)
        loss_date = today - timedelta(days=rng.randint(1, 365))
        context = {
            "coverage_limit": str(limit),
            "deductible": str(deductible),
            "policy_start": (loss_date - timedelta(days=days)).isoformat(),
            "claims_last_year": rng.choices([0, 1, 2, 3, 4], [40, 20, 10, 18, 12] if fraud else [70, 18, 7, 3, 2])[0],
            "reused_documents": ["h"] if rng.random() < (0.4 if fraud else 0.02) else [],
        }
        payload = {
            "claim_type": claim_type,
            "amount_claimed": f"{claimed:.2f}",
            "loss_date": loss_date.isoformat(),
            "other_party": claim_type == "auto_collision" and rng.random() < 0.3,
            "documents": [{}] * rng.choice([2, 2, 3]),
        }
        confirmed = 0.0 if fraud else max(0.0, min(loss * rng.uniform(0.92, 1.0), limit) - deductible)
        rows.append(
            {
                "features": claim_features(payload, context),
                "payable": round(confirmed, 2),
                "fraud": fraud,
                "claim_type": claim_type,
                "closed_on": loss_date.isoformat(),
            }
        )
    return rows
