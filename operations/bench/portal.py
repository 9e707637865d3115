"""``manage.py bench portal``: load a large history (portal_load), then time the portal's pages with Django's test
client (in-process: server time, no network) and, on PostgreSQL, EXPLAIN each page's SELECTs for sequential scans
of the big tables. Prints a PASS/FAIL table; the command exits non-zero when a page is over budget or scans."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.cache import cache
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from operations.bench.portal_explain import check_queries

P95_BUDGET_MS = 300.0
STRICT_EXPLAIN_BELOW = 100_000  # cases: on smaller loads the planner rightly prefers seq scans of small tables
PLAIN_STATIC = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


@dataclass
class PageResult:
    name: str
    times_ms: list[float]
    queries: int
    sql_ms: float = 0.0  # database time of the captured (warm) request
    scans: list[dict] = field(default_factory=list)
    explained: bool = False

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]

    budget_ms: float = P95_BUDGET_MS

    @property
    def ok(self) -> bool:
        return self.p95 <= self.budget_ms and not self.scans


def bench_users():
    """A senior supervisor of every queue and a supervisor of the smaller queue (per-user scoping)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from operations.packs.claims.definition import HANDLERS, SIU
    from operations.roles import AUDITOR, SENIOR_SUPERVISOR, SUPERVISOR
    from operations.services import ensure_roles

    ensure_roles()
    users = {}
    people = {
        "bench-senior": (SENIOR_SUPERVISOR, HANDLERS, SIU),
        "bench-siu": (SUPERVISOR, SIU),
        "bench-auditor": (AUDITOR,),
    }
    for username, groups in people.items():
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.groups.add(*[Group.objects.get_or_create(name=n)[0] for n in groups])
        users[username] = user
    return users


def pages(rng: random.Random) -> dict[str, tuple[str, str, Callable[[], str]]]:
    """name -> (user, method, url maker). URL makers pick a different row each run."""
    from operations.models import Case, CaseStatus, Escalation, EscalationStatus

    open_ids = list(
        Escalation.objects.filter(status=EscalationStatus.OPEN).order_by("-id").values_list("pk", flat=True)[:2000]
    )
    case_ids = list(Case.objects.order_by("-id").values_list("pk", flat=True)[:2000])
    case_ids += list(Case.objects.order_by("id").values_list("pk", flat=True)[:2000])
    refs = list(Case.objects.order_by("-id").values_list("reference", flat=True)[:500])
    day = Case.objects.order_by("-id").values_list("created_at", flat=True).first()
    day = day.date().isoformat() if day else "2026-01-01"
    queue, cases = reverse("portal:escalations"), reverse("portal:cases")
    senior, siu = "bench-senior", "bench-siu"
    return {
        "home": (senior, "get", lambda: reverse("portal:home")),
        "queue": (senior, "get", lambda: queue),
        "queue (one-queue user)": (siu, "get", lambda: queue),
        "queue page 20": (senior, "get", lambda: f"{queue}?page=20"),
        "queue filtered": (senior, "get", lambda: f"{queue}?sla=breached&amount_min=20000&claimed=unclaimed"),
        "queue by reason+priority": (senior, "get", lambda: f"{queue}?queue=Claims+handlers&reason=rule&priority=1"),
        "queue htmx partial": (senior, "htmx", lambda: f"{queue}?queue=Special+investigations"),
        "claim next": (senior, "post", lambda: reverse("portal:escalation-claim-next")),
        "escalation detail": (senior, "get", lambda: reverse("portal:escalation", args=[rng.choice(open_ids)])),
        "cases": (senior, "get", lambda: cases),
        "case search (reference)": (senior, "get", lambda: f"{cases}?reference={rng.choice(refs)[:-2]}"),
        "case search (status, day)": (
            senior,
            "get",
            lambda: f"{cases}?status={CaseStatus.WAITING}&submitted_after={day}&submitted_before={day}",
        ),
        "case detail": (senior, "get", lambda: reverse("portal:case", args=[rng.choice(case_ids)])),
        "dashboard (no cache)": (
            senior,
            "get",
            lambda: (cache.delete("portal:dashboard"), reverse("portal:dashboard"))[1],
        ),
        "dashboard (10 s cache)": (senior, "get", lambda: reverse("portal:dashboard")),
        "audit status panel": ("bench-auditor", "get", lambda: reverse("audit:status")),
    }


def time_pages(
    *, runs: int, explain: bool, strict: bool, out: Callable[[str], None], budget_ms: float = P95_BUDGET_MS
) -> list[PageResult]:
    users = bench_users()
    rng = random.Random(1)
    results = []
    with override_settings(STORAGES=PLAIN_STATIC, ALLOWED_HOSTS=["testserver"], DEBUG=False):
        clients = {}
        for name, user in users.items():
            clients[name] = Client()
            clients[name].force_login(user)
        for name, (who, method, url) in pages(rng).items():
            client = clients[who]

            def call(client=client, method=method, url=url):
                if method == "post":
                    return client.post(url())
                headers = {"HTTP_HX_REQUEST": "true"} if method == "htmx" else {}
                return client.get(url(), **headers)

            with CaptureQueriesContext(connection) as captured:
                response = call()  # also warms the caches a real server would have warm
            queries = list(captured.captured_queries)  # a property over the log, which the next request clears
            if response.status_code not in (200, 302):
                raise RuntimeError(f"{name}: HTTP {response.status_code}")
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                response = call()
                times.append((time.perf_counter() - t0) * 1000)
                if response.status_code not in (200, 302):
                    raise RuntimeError(f"{name}: HTTP {response.status_code}")
            sql_ms = sum(float(q["time"]) for q in queries) * 1000
            result = PageResult(name, times, len(queries), sql_ms=sql_ms, budget_ms=budget_ms)
            if explain:
                result.scans = check_queries(queries, strict=strict)
                result.explained = True
            results.append(result)
            out(f"  timed {name}")
    return results


def table(results: list[PageResult]) -> list[str]:
    header = (
        f"{'page':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'queries':>8} {'sql ms':>7}  {'EXPLAIN':<10} verdict"
    )
    lines = [header]
    for r in results:
        plan = ("seq scan" if r.scans else "indexes") if r.explained else "n/a"
        verdict = "PASS" if r.ok else "FAIL"
        if r.p95 > r.budget_ms:
            verdict += f" (p95 over {r.budget_ms:.0f} ms)"
        lines.append(
            f"{r.name:<28} {r.p50:>8.1f} {r.p95:>8.1f} {max(r.times_ms):>8.1f} {r.queries:>8} {r.sql_ms:>7.1f}  "
            f"{plan:<10} {verdict}"
        )
        for scan in r.scans:
            lines.append(f"    Seq Scan on {', '.join(scan['tables'])}: {scan['sql'][:300]}")
    return lines
