"""ML agents: scikit-learn models trained on the organization's own closed cases, stored as versioned artifacts.

A pack registers a *trainer* per model key (how to get labelled rows and how to fit and score them). ``train_agent``
fits on the rows, measures the model on a holdout against a naive baseline, saves the artifact under
``SELFOPS_MODELS_DIR`` and records a ``ModelArtifact`` (training-set digest, metrics). ``current_model`` gives the
newest artifact of a key, or the default model the pack ships, so a fresh install works without training.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from threadpoolctl import threadpool_limits

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from operations.errors import ValidationFailed

QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Trainer:
    """How to train one model key: ``rows(since)`` gives labelled rows from closed cases, ``synthetic(n)`` rows of a
    generated history, ``fit(rows)`` returns ``(model, metrics)``; ``default_path`` is the shipped model."""

    key: str
    rows: Callable[[date | None], list[dict]]
    synthetic: Callable[[int], list[dict]]
    fit: Callable[[list[dict]], tuple[Any, dict]]
    default_path: Path


_trainers: dict[str, Trainer] = {}


def register_trainer(trainer: Trainer) -> None:
    _trainers[trainer.key] = trainer


def trainer_for(key: str) -> Trainer:
    if key not in _trainers:
        raise ValidationFailed(
            f"no trainable model is registered under '{key}' (known: {', '.join(sorted(_trainers)) or 'none'})",
            fields={"agent_key": "unknown"},
        )
    return _trainers[key]


def matrix(rows: list[dict], features: list[str]) -> np.ndarray:
    return np.array([[float(r["features"][f]) for f in features] for r in rows], dtype=float)


def digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


# --- models ------------------------------------------------------------------------------------------------------


class AmountModel:
    """Quantile gradient boosting on log amounts: the median is the estimate, the 10–90% interval's width relative
    to it becomes the confidence (a narrow interval: the model has seen many claims like this one)."""

    def __init__(self, features: list[str], *, seed: int = 0, n_estimators: int = 60):
        from sklearn.ensemble import GradientBoostingRegressor

        self.features = features
        self.models = {
            q: GradientBoostingRegressor(
                loss="quantile", alpha=q, n_estimators=n_estimators, max_depth=3, learning_rate=0.2, random_state=seed
            )
            for q in QUANTILES
        }

    def fit(self, X: np.ndarray, y: np.ndarray) -> AmountModel:
        for model in self.models.values():
            model.fit(X, np.log1p(y))
        return self

    def predict_quantiles(self, X: np.ndarray) -> dict[float, np.ndarray]:
        out = {q: np.expm1(m.predict(X)).clip(min=0) for q, m in self.models.items()}
        low, mid, high = np.minimum(out[0.1], out[0.5]), out[0.5], np.maximum(out[0.9], out[0.5])
        return {0.1: low, 0.5: mid, 0.9: high}

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_quantiles(X)[0.5]

    @staticmethod
    def confidence(low: float, mid: float, high: float) -> float:
        relative_width = (high - low) / max(mid, 1.0)
        return float(min(1.0, max(0.0, 1.0 - relative_width)))


def fit_amount(rows: list[dict], features: list[str], *, group: str = "claim_type", seed: int = 0) -> tuple:
    """Fit an ``AmountModel`` on ``payable`` and report holdout MAE against the median of the training amounts by
    ``group`` (the naive baseline)."""
    from sklearn.metrics import mean_absolute_error
    from sklearn.model_selection import train_test_split

    rows = [r for r in rows if not r.get("fraud")]
    if len(rows) < 50:
        raise ValidationFailed(f"{len(rows)} labelled rows are too few to train on", fields={"rows": "too few"})
    train, test = train_test_split(rows, test_size=0.25, random_state=seed)
    y_train = np.array([r["payable"] for r in train])
    y_test = np.array([r["payable"] for r in test])
    model = AmountModel(features, seed=seed).fit(matrix(train, features), y_train)
    q = model.predict_quantiles(matrix(test, features))
    medians = {g: float(np.median([r["payable"] for r in train if r[group] == g])) for g in {r[group] for r in train}}
    overall = float(np.median(y_train))
    baseline = np.array([medians.get(r[group], overall) for r in test])
    inside = float(np.mean((y_test >= q[0.1]) & (y_test <= q[0.9])))
    confidences = [AmountModel.confidence(lo, mi, hi) for lo, mi, hi in zip(q[0.1], q[0.5], q[0.9], strict=True)]
    metrics = {
        "task": "amount",
        "train_rows": len(train),
        "holdout_rows": len(test),
        "mae": round(float(mean_absolute_error(y_test, q[0.5])), 2),
        "baseline": f"median payable by {group}",
        "baseline_mae": round(float(mean_absolute_error(y_test, baseline)), 2),
        "interval_10_90_coverage": round(inside, 3),
        "mean_confidence": round(float(np.mean(confidences)), 3),
    }
    return model, metrics


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if mask.any():
            out.append(
                {
                    "bin": f"{lo:.1f}-{hi:.1f}",
                    "n": int(mask.sum()),
                    "mean_predicted": round(float(p[mask].mean()), 4),
                    "observed_rate": round(float(y[mask].mean()), 4),
                }
            )
    return out


def fit_probability(rows: list[dict], features: list[str], *, baseline_score: Callable[[dict], float], seed: int = 0):
    """Fit a calibrated classifier of ``fraud`` and report holdout AUC, Brier score and reliability bins, against a
    hand-written score (AUC) and the training base rate (Brier) as naive baselines."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import train_test_split

    y_all = [1 if r["fraud"] else 0 for r in rows]
    if sum(y_all) < 10 or len(rows) - sum(y_all) < 10:
        raise ValidationFailed("too few positive or negative examples to train on", fields={"rows": "too few"})
    train, test = train_test_split(rows, test_size=0.25, random_state=seed, stratify=y_all)
    y_train = np.array([1 if r["fraud"] else 0 for r in train])
    y_test = np.array([1 if r["fraud"] else 0 for r in test])
    model = CalibratedClassifierCV(LogisticRegression(max_iter=2000, C=1.0), method="sigmoid", cv=3)
    model.fit(matrix(train, features), y_train)
    p = model.predict_proba(matrix(test, features))[:, 1]
    base_rate = float(y_train.mean())
    hand = np.array([baseline_score(r["features"]) for r in test])
    metrics = {
        "task": "probability",
        "train_rows": len(train),
        "holdout_rows": len(test),
        "positives_holdout": int(y_test.sum()),
        "auc": round(float(roc_auc_score(y_test, p)), 4),
        "brier": round(float(brier_score_loss(y_test, p)), 5),
        "baseline": "hand-written signal score (AUC); training base rate (Brier)",
        "baseline_auc": round(float(roc_auc_score(y_test, hand)), 4),
        "baseline_brier": round(float(brier_score_loss(y_test, np.full(len(y_test), base_rate))), 5),
        "reliability": reliability_bins(y_test, p),
    }
    model.features = features
    return model, metrics


# --- artifacts -----------------------------------------------------------------------------------------------------

_loaded: dict[Any, Any] = {}


def load_artifact(path: Path | str) -> Any:
    return joblib.load(path)  # only files this deployment wrote (var/models) or shipped with a pack


_pins: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("selfops_model_pins", default=None)


def pinned(fn: Callable, model_key: str, artifact_version: str) -> Callable:
    """``fn`` run with ``model_key`` pinned to one artifact version: an agent version that names its model
    (``AgentVersion.source = "key@version"``) keeps that model when a newer one is trained."""

    def run(ctx):
        token = _pins.set({**(_pins.get() or {}), model_key: artifact_version})
        try:
            return fn(ctx)
        finally:
            _pins.reset(token)

    return run


def current_model(agent_key: str) -> tuple[Any, str]:
    """The model that serves ``agent_key`` and its version: the pinned artifact when the running agent version names
    one, else the newest trained artifact, else the pack's shipped default. One small query; the loaded model is
    cached by artifact id."""
    from operations.models import ModelArtifact

    qs = ModelArtifact.objects.filter(agent_key=agent_key)
    pin = (_pins.get() or {}).get(agent_key)
    if pin == "default":
        qs = qs.none()
    elif pin:
        qs = qs.filter(version=pin)
        if not qs.exists():
            raise LookupError(f"model {agent_key} has no artifact {pin}")
    row = qs.order_by("-created_at", "-id").values("id", "path", "version").first()
    cache_key = row["id"] if row else ("default", agent_key)
    if cache_key not in _loaded:
        path = row["path"] if row else trainer_for(agent_key).default_path
        _loaded[cache_key] = (load_artifact(path), row["version"] if row else "default")
    return _loaded[cache_key]


def clear_caches() -> None:
    _loaded.clear()


def train_agent(
    *, agent_key: str, actor: Actor, since: date | None = None, synthetic: int | None = None, output: Path | None = None
):
    """Train ``agent_key``'s model on closed cases (since ``since``) plus ``synthetic`` rows of generated history
    (by default only when fewer than 500 closed cases have labels), save the artifact and record it with its
    training-set digest and holdout metrics. With ``output`` the model is trained on the synthetic history only and
    written to that file only (a pack's default model)."""
    from operations.models import ModelArtifact

    trainer = trainer_for(agent_key)
    real = [] if output is not None else trainer.rows(since)  # a shipped default is the synthetic history's alone
    if synthetic is None:
        synthetic = 4000 if len(real) < 500 else 0
    rows = real + (trainer.synthetic(synthetic) if synthetic else [])
    with threadpool_limits(limits=1):  # BLAS threads spinning on a shared 2-core machine cost more than they give
        model, metrics = trainer.fit(rows)
    metrics = {**metrics, "closed_case_rows": len(real), "synthetic_rows": synthetic, "since": str(since or "")}
    training_digest = digest(rows)
    version = f"{timezone.now():%Y%m%d%H%M%S}-{training_digest[:6]}"
    bundle = {"agent_key": agent_key, "version": version, "model": model, "metrics": metrics}
    if output is not None:
        joblib.dump(bundle, output, compress=3)
        return bundle
    directory = Path(settings.SELFOPS_MODELS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{agent_key}-{version}.joblib"
    joblib.dump(bundle, path, compress=3)
    with transaction.atomic():
        artifact = ModelArtifact.objects.create(
            agent_key=agent_key,
            version=version,
            path=str(path),
            training_digest=training_digest,
            training_rows=len(rows),
            metrics=metrics,
            created_by=actor.label,
        )
        audit_record(
            actor=actor,
            action=AuditAction.MODEL_TRAINED,
            subject=artifact,
            data={"agent_key": agent_key, "version": version, "digest": training_digest, "metrics": metrics},
        )
    return artifact
