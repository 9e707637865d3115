"""Backtest: replay an agent's recorded proposals against a draft policy, before publishing it.

Each recorded ``StepRun`` holds the agent's proposal and the verdict it got; the draft is judged with the same pure
``evaluate()`` on the proposal and the case as submitted (payload, reference, workflow). Budgets and rates are not
replayed (they depend on the order and timing of live traffic), and the case ``context`` at decision time is not
recorded, so rules see the case's context as it is now (earlier steps' decisions are in it). Rows are streamed with
``values_list().iterator()``, so memory stays flat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.apps import apps

from governance.evaluation import PolicySnapshot, evaluate
from governance.rules import rule_errors

SAMPLES = 10


@dataclass(frozen=True)
class _Recorded:
    outcome: str
    action: str
    amount: Decimal | None
    confidence: float
    rationale: str
    data: dict


@dataclass
class BacktestReport:
    agent_key: str
    since: datetime
    until: datetime
    proposals: int = 0
    allowed_before: int = 0
    allowed_after: int = 0
    allow_to_escalate: int = 0
    escalate_to_allow: int = 0
    amount_allow_to_escalate: Decimal = Decimal(0)
    amount_escalate_to_allow: Decimal = Decimal(0)
    reasons_after: dict[str, int] = field(default_factory=dict)
    samples_allow_to_escalate: list[dict] = field(default_factory=list)
    samples_escalate_to_allow: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def flips(self) -> int:
        return self.allow_to_escalate + self.escalate_to_allow


def draft_snapshot(agent_key: str, terms: dict) -> PolicySnapshot:
    """A policy snapshot from draft terms (the fields of a policy version); raises ``ValueError`` on bad rules."""
    if errors := rule_errors(terms.get("rules")):
        raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()))

    def dec(name):
        value = terms.get(name)
        return Decimal(str(value)) if value not in (None, "") else None

    hourly = terms.get("hourly_decision_limit")
    return PolicySnapshot(
        agent_key=agent_key,
        version=0,
        autonomy=terms.get("autonomy") or "bounded",
        allowed_actions=tuple(terms.get("allowed_actions") or ()),
        max_amount=dec("max_amount"),
        min_confidence=dec("min_confidence"),
        daily_amount_budget=dec("daily_amount_budget"),
        hourly_decision_limit=int(hourly) if hourly not in (None, "") else None,
        qa_sample_rate=dec("qa_sample_rate") or Decimal(0),
        rules=tuple(terms.get("rules") or ()),
    )


def _proposal(data: dict) -> _Recorded:
    amount = data.get("amount")
    return _Recorded(
        outcome=data.get("outcome", ""),
        action=data.get("action", ""),
        amount=Decimal(amount) if amount not in (None, "") else None,
        confidence=float(data.get("confidence", 1.0)),
        rationale=data.get("rationale", ""),
        data=data.get("data") or {},
    )


def backtest(draft_terms: dict, agent_key: str, since: datetime, until: datetime) -> BacktestReport:
    """What ``draft_terms`` would have decided for ``agent_key``'s proposals recorded in [since, until): how many
    verdicts flip each way, the amounts involved, and sample cases of each flip."""
    draft = draft_snapshot(agent_key, draft_terms)
    step_run = apps.get_model("operations", "StepRun")
    report = BacktestReport(agent_key=agent_key, since=since, until=until)
    t0 = time.perf_counter()
    # Decoding each case's payload and context is most of the cost: fetch them only when a draft rule reads the case.
    needs_case = "case" in draft.rules_needs
    fields = ["case_id", "proposal", "verdict__decision"]
    if needs_case:
        fields += ["case__reference", "case__workflow__key", "case__payload", "case__context"]
    rows = (
        step_run.objects.filter(
            agent_key=agent_key, started_at__gte=since, started_at__lt=until, proposal__isnull=False
        )
        .exclude(verdict__isnull=True)
        .order_by()
        .values_list(*fields)
        .iterator(chunk_size=5000)
    )
    reasons_after = report.reasons_after
    case: dict[str, Any] = {"payload": {}, "context": {}}
    for row in rows:
        case_id, proposal_data, decision = row[:3]
        if needs_case:
            case = {"id": case_id, "reference": row[3], "workflow": row[4], "payload": row[5], "context": row[6] or {}}
        else:
            case["id"] = case_id
        report.proposals += 1
        was_allowed = decision == "allow"
        proposal = _proposal(proposal_data)
        verdict = evaluate(draft, proposal, case)
        report.allowed_before += was_allowed
        report.allowed_after += verdict.allowed
        for reason in verdict.reasons:
            reasons_after[reason.code] = reasons_after.get(reason.code, 0) + 1
        if was_allowed == verdict.allowed:
            continue
        amount = proposal.amount or Decimal(0)
        sample = {
            "case_id": case_id,
            "amount": proposal.amount,
            "action": proposal.action,
            "reasons": [r.message for r in verdict.reasons],
        }
        if was_allowed:
            report.allow_to_escalate += 1
            report.amount_allow_to_escalate += amount
            if len(report.samples_allow_to_escalate) < SAMPLES:
                report.samples_allow_to_escalate.append(sample)
        else:
            report.escalate_to_allow += 1
            report.amount_escalate_to_allow += amount
            if len(report.samples_escalate_to_allow) < SAMPLES:
                report.samples_escalate_to_allow.append(sample)
    samples = report.samples_allow_to_escalate + report.samples_escalate_to_allow
    references = dict(
        apps.get_model("operations", "Case")
        .objects.filter(pk__in={s["case_id"] for s in samples})
        .values_list("pk", "reference")
    )
    for sample in samples:
        sample["reference"] = references.get(sample["case_id"], "")
    report.seconds = time.perf_counter() - t0
    return report
