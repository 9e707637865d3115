"""Benchmark governance: evaluate() per proposal (no rules, with CEL rules) and a backtest over N recorded proposals.

The backtest rows are inserted into the configured database inside a transaction that is rolled back at the end.
"""

import statistics
import time
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from governance.backtest import backtest
from governance.evaluation import PolicySnapshot, evaluate
from operations.agents import Proposal
from operations.packs.claims.definition import POLICIES

RULES = (
    {
        "id": "theft_cap",
        "expression": 'proposal.amount <= 2500.0 || case.payload.claim_type != "home_theft"',
        "reason_code": "theft_cap",
        "message": "theft over 2,500",
    },
    {
        "id": "docs",
        "expression": "size(case.payload.documents) >= 1",
        "reason_code": "no_documents",
        "message": "no documents",
    },
    {
        "id": "confident_big",
        "expression": "proposal.amount < 4000.0 || proposal.confidence >= 0.9",
        "reason_code": "big_unsure",
        "message": "large and unsure",
    },
)
PAYLOAD = {
    "policy_number": "AU-000123",
    "claim_type": "home_theft",
    "loss_date": "2026-01-02",
    "amount_claimed": "1234.50",
    "description": "Home theft on 2026-01-02",
    "other_party": False,
    "details": {"police_report_number": "PR 1", "items": "bike"},
    "claimant": {"name": "Anna Rossi", "email": "anna@customers.example"},
    "documents": [{"kind": "police_report", "sha256": "0" * 64, "size_bytes": 1000}] * 3,
}


class _Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Measure evaluate() per proposal and a backtest over N recorded proposals (rolled back afterwards)."

    def add_arguments(self, parser):
        parser.add_argument("--evaluations", type=int, default=20000)
        parser.add_argument(
            "--backtest", type=int, default=100000, help="recorded proposals for the backtest (0: skip)"
        )

    def handle(self, *args, evaluations, backtest: int, **options):
        if not 1 <= evaluations <= 10_000_000 or not 0 <= backtest <= 10_000_000:
            raise CommandError("--evaluations must be between 1 and 10,000,000 and --backtest between 0 and 10,000,000")
        case = {"id": 1, "reference": "CLM-1", "workflow": "claims", "payload": PAYLOAD, "context": {"a": {"b": 1}}}
        proposal = Proposal(outcome="approve", action="approve", amount=Decimal("1234.50"), confidence=0.85)
        limits = {"allowed_actions": ("approve", "deny"), "max_amount": Decimal(5000), "min_confidence": Decimal("0.7")}
        demo = dict(POLICIES["claims.approval"])
        for label, snapshot in (
            ("limits only", PolicySnapshot(agent_key="a", version=1, **limits)),
            ("claims.approval demo policy (1 rule)", PolicySnapshot(agent_key="a", version=1, **demo)),
            ("limits + 3 CEL rules", PolicySnapshot(agent_key="a", version=1, rules=RULES, **limits)),
        ):
            self.stdout.write(f"evaluate(), {label}: {self._per_call(snapshot, proposal, case, evaluations):.1f} µs")
        if backtest:
            self._backtest(backtest)

    def _per_call(self, snapshot, proposal, case, n) -> float:
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n // 5):
                evaluate(snapshot, proposal, case)
            runs.append((time.perf_counter() - t0) / (n // 5) * 1e6)
        return statistics.median(runs)

    def _backtest(self, n: int) -> None:
        from operations.models import Step, StepRun
        from operations.services import case_submit, workflow_install

        try:
            with transaction.atomic():
                actor = Actor.system("bench")
                workflow_install(
                    definition={
                        "key": "bench-governance",
                        "name": "bench",
                        "payload_schema": {"type": "object"},
                        "steps": [
                            {"key": "s", "name": "s", "agent_key": "bench.agent", "transitions": {"ok": "@complete"}}
                        ],
                    },
                    actor=actor,
                )
                step = Step.objects.get(workflow__key="bench-governance", workflow__status="active")
                cases = [
                    case_submit(workflow_key="bench-governance", reference=f"B-{i}", payload=PAYLOAD, actor=actor)
                    for i in range(100)
                ]
                now = timezone.now()
                t0 = time.perf_counter()
                batch = []
                for i in range(n):
                    amount = Decimal(100 + (i * 37) % 6000)
                    batch.append(
                        StepRun(
                            case=cases[i % 100],
                            step=step,
                            attempt=1,
                            status="succeeded",
                            agent_key="bench.agent",
                            proposal={
                                "outcome": "ok",
                                "action": "approve",
                                "amount": str(amount),
                                "confidence": 0.6 + (i % 40) / 100,
                            },
                            verdict={"decision": "allow" if amount <= 5000 else "escalate", "reasons": []},
                            started_at=now - timedelta(seconds=i),
                            finished_at=now,
                        )
                    )
                    if len(batch) == 5000:
                        StepRun.objects.bulk_create(batch)
                        batch = []
                StepRun.objects.bulk_create(batch)
                self.stdout.write(f"inserted {n:,} recorded proposals in {time.perf_counter() - t0:.1f} s")
                for label, terms in (
                    ("limits only", {"max_amount": "4000", "min_confidence": "0.7"}),
                    ("claims.approval demo policy (1 rule)", {**POLICIES["claims.approval"], "max_amount": "4000"}),
                    ("limits + 3 CEL rules", {"max_amount": "4000", "min_confidence": "0.7", "rules": list(RULES)}),
                ):
                    report = backtest(terms, "bench.agent", now - timedelta(days=30), now + timedelta(seconds=1))
                    self.stdout.write(
                        f"backtest, {label}: {report.proposals:,} proposals in {report.seconds:.2f} s "
                        f"({report.allow_to_escalate:,} allow→escalate, {report.escalate_to_allow:,} escalate→allow)"
                    )
                raise _Rollback
        except _Rollback:
            pass
