"""Load a large synthetic history for measuring the portal: finished cases with step runs, open escalations with
their waiting cases and audit events, and resolved escalations to compare with. Bulk inserts; not audited as
business events (it is test data, written straight to the tables)."""

import random
import time
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from operations.models import (
    Case,
    CaseStatus,
    Escalation,
    EscalationStatus,
    Resolution,
    StepRun,
    StepRunStatus,
    WaitReason,
)
from operations.packs.claims.definition import HANDLERS, SIU
from operations.packs.claims.install import install
from operations.selectors import active_workflow
from operations.services import ensure_roles

REASONS = ["max_amount", "min_confidence", "rule", "agent_error"]
BATCH = 5000


class Command(BaseCommand):
    help = "Bulk-load N finished cases and M open escalations (for page timings: manage.py bench_portal)."

    def add_arguments(self, parser):
        parser.add_argument("--cases", type=int, default=100_000)
        parser.add_argument("--open-escalations", type=int, default=10_000)
        parser.add_argument("--runs-per-case", type=int, default=3)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, cases, open_escalations, runs_per_case, seed, **options):
        if not 0 <= cases <= 10_000_000:
            raise CommandError("--cases must be between 0 and 10,000,000")
        if not 0 <= open_escalations <= 1_000_000:
            raise CommandError("--open-escalations must be between 0 and 1,000,000")
        if not 1 <= runs_per_case <= 20:
            raise CommandError("--runs-per-case must be between 1 and 20")
        rng = random.Random(seed)
        t0 = time.perf_counter()
        workflow = active_workflow("claims") or install(actor=Actor.system("load_volume"), policies=2000)
        ensure_roles()
        steps = list(workflow.steps.order_by("position"))
        approval = next(s for s in steps if s.key == "approval")
        now = timezone.now()
        tag = f"VOL{int(now.timestamp())}"
        created_field = Case._meta.get_field("created_at")
        created_field.auto_now_add = False  # keep the generated submission times
        try:
            self._finished(rng, workflow, steps, approval, cases, runs_per_case, now, tag)
            self._open(rng, workflow, approval, open_escalations, now, tag)
        finally:
            created_field.auto_now_add = True
        self.stdout.write(
            self.style.SUCCESS(
                f"Loaded {cases:,} finished cases and {open_escalations:,} open escalations "
                f"in {time.perf_counter() - t0:.1f} s."
            )
        )

    def _finished(self, rng, workflow, steps, approval, n, runs_per_case, now, tag):
        for start in range(0, n, BATCH):
            with transaction.atomic():
                batch = []
                for i in range(start, min(n, start + BATCH)):
                    created = now - timedelta(seconds=rng.randint(60, 60 * 86400))
                    status = CaseStatus.COMPLETED if rng.random() < 0.85 else CaseStatus.REJECTED
                    batch.append(
                        Case(
                            workflow=workflow,
                            reference=f"{tag}-F{i:07d}",
                            payload={"amount_claimed": str(rng.randint(100, 40000))},
                            status=status,
                            created_at=created,
                            finished_at=created + timedelta(seconds=rng.lognormvariate(3, 1.5)),
                            submitted_by="load_volume",
                        )
                    )
                created = Case.objects.bulk_create(batch, batch_size=BATCH)
                runs, escalations = [], []
                for case in created:
                    for step in steps[:runs_per_case]:
                        started = case.created_at + timedelta(seconds=1)
                        runs.append(
                            StepRun(
                                case=case,
                                step=step,
                                attempt=1,
                                status=StepRunStatus.SUCCEEDED,
                                agent_key=step.agent_key,
                                started_at=started,
                                finished_at=started,
                                duration_ms=rng.lognormvariate(1, 0.6),
                            )
                        )
                    if rng.random() < 0.15:  # a human decided this one
                        amount = Decimal(rng.randint(5001, 40000))
                        resolution = rng.choice([Resolution.APPROVE] * 6 + [Resolution.AMEND] * 2 + [Resolution.REJECT])
                        deadline = case.created_at + timedelta(hours=24)
                        escalations.append(
                            Escalation(
                                case=case,
                                step=approval,
                                reason=rng.choice(REASONS),
                                reasons=[{"code": "max_amount", "message": f"amount {amount} exceeds 5,000.00"}],
                                proposal={"outcome": "approve", "action": "approve", "amount": str(amount)},
                                amount=amount,
                                queue=HANDLERS,
                                status=EscalationStatus.RESOLVED,
                                sla_deadline=deadline,
                                resolution=resolution,
                                reason_code="other",
                                resolution_note="bulk-loaded",
                                resolved_by="load_volume",
                                resolved_at=deadline - timedelta(hours=rng.uniform(-4, 23)),
                            )
                        )
                StepRun.objects.bulk_create(runs, batch_size=BATCH)
                Escalation.objects.bulk_create(escalations, batch_size=BATCH)
            self.stdout.write(f"  finished cases: {min(n, start + BATCH):,}/{n:,}")

    def _open(self, rng, workflow, approval, n, now, tag):
        for start in range(0, n, BATCH):
            with transaction.atomic():
                batch = [
                    Case(
                        workflow=workflow,
                        reference=f"{tag}-O{i:07d}",
                        payload={"amount_claimed": str(rng.randint(100, 40000)), "documents": []},
                        status=CaseStatus.WAITING,
                        wait_reason=WaitReason.ESCALATION,
                        current_step=approval,
                        created_at=now - timedelta(hours=rng.uniform(0, 48)),
                        submitted_by="load_volume",
                    )
                    for i in range(start, min(n, start + BATCH))
                ]
                cases = Case.objects.bulk_create(batch, batch_size=BATCH)
                escalations, events = [], []
                for case in cases:
                    amount = Decimal(rng.randint(5001, 60000))
                    escalations.append(
                        Escalation(
                            case=case,
                            step=approval,
                            reason=rng.choice(REASONS),
                            reasons=[{"code": "max_amount", "message": f"amount {amount} exceeds the agent limit"}],
                            proposal={"outcome": "approve", "action": "approve", "amount": str(amount)},
                            amount=amount,
                            queue=HANDLERS if rng.random() < 0.8 else SIU,
                            priority=rng.choice([1, 2, 2, 2, 3]),
                            sla_deadline=now + timedelta(hours=rng.uniform(-6, 24)),
                        )
                    )
                    for action in (AuditAction.CASE_SUBMITTED, AuditAction.STEP_DECIDED, AuditAction.ESCALATION_OPENED):
                        events.append(
                            AuditEvent(
                                actor_type="system",
                                actor_id="load_volume",
                                actor_label="load_volume",
                                action=action,
                                subject_type="operations.case",
                                subject_id=str(case.pk),
                                case_id=case.pk,
                                data={"step": "approval"},
                            )
                        )
                Escalation.objects.bulk_create(escalations, batch_size=BATCH)
                AuditEvent.objects.bulk_create(events, batch_size=BATCH)
            self.stdout.write(f"  open escalations: {min(n, start + BATCH):,}/{n:,}")
