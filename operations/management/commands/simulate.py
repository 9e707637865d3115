import random
import sys
import time
from collections import Counter

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from audit.actors import Actor
from operations.errors import DomainError
from operations.models import Case, CaseStatus
from operations.packs.claims.data import ClaimGenerator
from operations.packs.claims.definition import WORKFLOW_KEY
from operations.packs.claims.install import policies_in_db
from operations.services import case_submit

END_STATE = {CaseStatus.COMPLETED: "completed", CaseStatus.REJECTED: "rejected", CaseStatus.WAITING: "escalated"}


class Command(BaseCommand):
    help = "Submit realistic synthetic claims (auto-approvals, denials, escalations) and optionally wait for them."

    def add_arguments(self, parser):
        parser.add_argument("--cases", type=int, default=100)
        parser.add_argument("--rate", type=float, default=0, help="claims per second (0: as fast as possible)")
        parser.add_argument("--wait", action="store_true", help="block until no submitted claim is running")
        parser.add_argument("--seed", type=int, default=None, help="for a reproducible stream")
        parser.add_argument("--timeout", type=float, default=1800, help="seconds --wait waits at most")

    def handle(self, *args, cases, rate, wait, seed, timeout, **options):
        if cases < 1:
            raise CommandError("--cases must be at least 1")
        if rate < 0:
            raise CommandError("--rate must be zero or more")
        seed = seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000)
        try:
            generator = ClaimGenerator(policies_in_db(), seed=seed)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        actor = Actor.system("simulate")
        expected = {}
        t0 = time.monotonic()
        ids = []
        for i, claim in enumerate(generator.stream(cases)):
            if wait:
                expected[claim.reference] = claim.expected
            try:
                ids.append(
                    case_submit(
                        workflow_key=WORKFLOW_KEY, reference=claim.reference, payload=claim.payload, actor=actor
                    ).pk
                )
            except DomainError as exc:
                raise CommandError(f"{claim.reference}: {exc.message} {exc.fields}") from exc
            if rate:
                time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        submitted = time.monotonic() - t0
        self.stdout.write(f"Submitted {len(ids):,} claims (seed {seed}) in {submitted:.1f} s")
        if not wait:
            return
        counts = self._wait(ids, t0, timeout)
        elapsed = time.monotonic() - t0
        self._summary(ids, expected, counts, elapsed)

    def _counts(self, ids) -> Counter:
        counts = Counter()
        for chunk in range(0, len(ids), 5000):
            part = ids[chunk : chunk + 5000]
            counts.update(
                dict(Case.objects.filter(pk__in=part).values_list("status").annotate(n=Count("id")).order_by())
            )
        return counts

    def _wait(self, ids, t0, timeout) -> Counter:
        tty = sys.stdout.isatty()
        total = len(ids)
        while True:
            counts = self._counts(ids)
            done = total - counts.get(CaseStatus.RUNNING, 0)
            width = 30
            bar = "#" * int(width * done / total) + "." * (width - int(width * done / total))
            line = (
                f"[{bar}] {done:,}/{total:,}  "
                + "  ".join(f"{s}={counts.get(s, 0):,}" for s in CaseStatus.values)
                + f"  {time.monotonic() - t0:.0f}s"
            )
            self.stdout.write(("\r" + line) if tty else line, ending="" if tty else "\n")
            self.stdout.flush()
            if done == total:
                if tty:
                    self.stdout.write("")
                return counts
            if time.monotonic() - t0 > timeout:
                self.stdout.write("")
                raise CommandError(
                    f"timed out after {timeout:.0f} s with {counts.get(CaseStatus.RUNNING, 0)} "
                    "claims still running — is a qcluster running?"
                )
            time.sleep(0.5 if tty else 2)

    def _summary(self, ids, expected, counts, elapsed):
        final = dict(Case.objects.filter(pk__in=ids).values_list("reference", "status")) if len(ids) <= 100000 else {}
        unexpected = [ref for ref, status in final.items() if END_STATE.get(status) != expected[ref]]
        self.stdout.write(
            f"completed {counts.get(CaseStatus.COMPLETED, 0):,} · rejected {counts.get(CaseStatus.REJECTED, 0):,} · "
            f"escalated (waiting) {counts.get(CaseStatus.WAITING, 0):,} · failed {counts.get(CaseStatus.FAILED, 0):,}"
            f" · cancelled {counts.get(CaseStatus.CANCELLED, 0):,}"
        )
        self.stdout.write(f"elapsed {elapsed:.1f} s · {len(ids) / elapsed:.1f} claims/s end to end")
        if unexpected:
            self.stdout.write(
                self.style.ERROR(
                    f"{len(unexpected)} claims ended other than their scenario intends, e.g. {unexpected[:5]}"
                )
            )
            raise SystemExit(1)
        self.stdout.write(self.style.SUCCESS("every claim ended as its scenario intends"))
