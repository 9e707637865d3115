"""``manage.py bench portal``: load a million cases, ten million audit events and 100k open escalations (set-based
inserts), then time the portal's pages and check on PostgreSQL that their queries use indexes. Exits non-zero when a
page is over 300 ms p95 or scans a big table sequentially."""

import os

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from audit.actors import Actor
from operations.bench.portal import P95_BUDGET_MS, STRICT_EXPLAIN_BELOW, bench_users, table, time_pages
from operations.bench.portal_load import PortalLoad


class Command(BaseCommand):
    help = (
        "Load N cases / E audit events / M open escalations, then time the portal pages (p50/p95) and EXPLAIN their "
        "queries (PostgreSQL). `--skip-load` re-times an existing load."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cases", type=int, default=1_000_000)
        parser.add_argument("--events", type=int, default=10_000_000)
        parser.add_argument("--open-escalations", type=int, default=100_000)
        parser.add_argument("--runs", type=int, default=20)
        parser.add_argument("--skip-load", action="store_true", help="re-time the history already loaded")
        parser.add_argument("--p95-budget", type=float, default=P95_BUDGET_MS, help="ms per page (default 300)")

    def handle(self, *args, cases, events, open_escalations, runs, skip_load, p95_budget, **options):
        from operations import metrics
        from operations.models import Case
        from operations.packs.claims.install import install
        from operations.selectors import active_workflow, workflow_steps

        if min(cases, events, open_escalations) < 0 or runs < 1 or open_escalations > cases:
            raise CommandError("sizes must be positive, --runs at least 1, --open-escalations at most --cases")
        out = self.stdout.write
        if not skip_load:
            workflow = active_workflow("claims") or install(actor=Actor.system("bench"), policies=2000)
            users = bench_users()
            out(
                f"loading {cases:,} cases, {events:,} audit events, {open_escalations:,} open escalations "
                f"({connection.vendor})"
            )
            PortalLoad(cases=cases, events=events, open_escalations=open_escalations, out=out).run(
                workflow=workflow, steps=workflow_steps(workflow.pk), users=list(users.values())
            )
            metrics.rollup_forget()  # history changed behind the stored periods
        rolled = metrics.rollup_closed_periods()  # what the schedule does every few minutes
        out(f"dashboard rollup: {rolled['periods']} closed period(s) aggregated in {rolled['seconds']:.1f} s")
        loaded = Case.objects.count() if connection.vendor != "postgresql" else _estimate(Case)
        explain = connection.vendor == "postgresql"
        strict = loaded < STRICT_EXPLAIN_BELOW
        load_before = os.getloadavg()[0]
        out(f"timing {runs} runs per page against ~{loaded:,} cases")
        results = time_pages(runs=runs, explain=explain, strict=strict, out=out, budget_ms=p95_budget)
        out("")
        out(
            f"machine load average {load_before:.1f} before timing, {os.getloadavg()[0]:.1f} after "
            f"({os.cpu_count()} cores); sql ms: the database's share of one warm request"
        )
        for line in table(results):
            out(line)
        if explain:
            mode = "enable_seqscan=off: could an index serve it" if strict else "the planner's own choice"
            out(f"EXPLAIN of every SELECT each page ran ({mode}); big tables: cases, escalations, step runs, audit")
        else:
            out("EXPLAIN checks run on PostgreSQL only")
        failed = [r.name for r in results if not r.ok]
        if failed:
            raise CommandError(f"FAIL: {', '.join(failed)} (budget {p95_budget:.0f} ms p95, no seq scan)")
        out(self.style.SUCCESS(f"PASS: every page under {p95_budget:.0f} ms p95 with index scans"))


def _estimate(model) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [model._meta.db_table])
        row = cursor.fetchone()
    return max(int(row[0]) if row else 0, 0) or model.objects.count()
