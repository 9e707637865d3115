"""Backtest: replay an agent's recorded proposals against a draft policy, before publishing it.

Each recorded ``StepRun`` holds the agent's proposal and the verdict it got; the draft is judged with the same pure
``evaluate()`` on the proposal and the case as submitted (payload, reference, workflow). Budgets and rates are not
replayed (they depend on the order and timing of live traffic), and the case ``context`` at decision time is not
recorded, so rules see the case's context as it is now (earlier steps' decisions are in it). Rows are streamed with
``values_list().iterator()`` and judged in batches, so memory stays flat: only the proposal fields a verdict needs are
fetched (extracted as text by the database), the cases of a batch in one query, and each case is converted into CEL
values once however many of its proposals are judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.db.models import Value
from django.db.models.fields.json import KT

from governance.evaluation import PolicySnapshot, evaluate
from governance.rules import case_context, rule_errors

SAMPLES = 10
BATCH = 5000
CASE_FIELDS = ["reference", "workflow__key", "payload", "context"]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much, and there is one per row
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


_ABSENT = (None, "", "null")  # SQLite's ->> gives 'null' for a JSON null, PostgreSQL's gives NULL


def _amount(text: str | None) -> Decimal | None:
    return Decimal(text) if text not in _ABSENT else None


def _case_views(case_ids, fields: list[str]) -> dict[int, dict]:
    """The plain views of some cases (what ``operations.engine.case_view`` gives rules), in one query."""
    rows = apps.get_model("operations", "Case").objects.filter(pk__in=case_ids).values_list("pk", *fields)
    return {
        pk: {"id": pk, "reference": ref, "workflow": wf, "payload": payload, "context": context or {}}
        for pk, ref, wf, payload, context in rows
    }


def backtest(draft_terms: dict, agent_key: str, since: datetime, until: datetime) -> BacktestReport:
    """What ``draft_terms`` would have decided for ``agent_key``'s proposals recorded in [since, until): how many
    verdicts flip each way, the amounts involved, and sample cases of each flip."""
    draft = draft_snapshot(agent_key, draft_terms)
    step_run = apps.get_model("operations", "StepRun")
    report = BacktestReport(agent_key=agent_key, since=since, until=until)
    t0 = time.perf_counter()
    needs = draft.rules_needs
    wanted = needs.get("proposal", {})  # None: a rule reads the proposal whole
    with_data = wanted is None or "data" in wanted
    with_rationale = wanted is None or "rationale" in wanted
    fields = [
        "case_id",
        KT("verdict__decision"),
        KT("proposal__outcome"),
        KT("proposal__action"),
        KT("proposal__amount"),
        KT("proposal__confidence"),
        KT("proposal__rationale") if with_rationale else Value(""),
        "proposal__data" if with_data else Value(""),  # not fetched: no rule reads it (a JSON null would be decoded)
    ]
    rows = (
        step_run.objects.filter(
            agent_key=agent_key, started_at__gte=since, started_at__lt=until, proposal__isnull=False
        )
        .exclude(verdict__isnull=True)
        .order_by()
        .values_list(*fields)
        .iterator(chunk_size=BATCH)
    )
    for batch in _batches(rows, BATCH):
        _judge_batch(draft, batch, report)
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


def _batches(rows, size: int):
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _judge_batch(draft: PolicySnapshot, batch: list[tuple], report: BacktestReport) -> None:
    needs_case = "case" in draft.rules_needs
    views = _case_views({row[0] for row in batch}, CASE_FIELDS) if needs_case else {}
    prepared: dict[int, Any] = {}  # case id -> its CEL context, built once per case in this batch
    reasons_after = report.reasons_after
    for case_id, decision, outcome, action, amount_text, confidence, rationale, data in batch:
        case = views.get(case_id) or {"id": case_id, "payload": {}, "context": {}}
        context = None
        if draft.compiled_rules:
            context = prepared.get(case_id)
            if context is None:
                context = prepared[case_id] = case_context(draft.rules_needs, case)
        proposal = _Recorded(
            outcome=outcome or "",
            action=action or "",
            amount=_amount(amount_text),
            confidence=float(confidence) if confidence not in _ABSENT else 1.0,
            rationale=rationale or "",
            data=data or {},
        )
        verdict = evaluate(draft, proposal, case, prepared=context)
        was_allowed = decision == "allow"
        report.proposals += 1
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
