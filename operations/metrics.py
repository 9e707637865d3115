"""Dashboard figures, computed with SQL aggregates and fast on a million cases.

Everything that counts what happened in a period (cases in and out, straight-through, cycle time, escalations by
reason, decisions, SLA, step latency, agents) is *additive*: the figures of a window are the sum of the figures of
its parts. So each closed hour of today and each closed day before it is aggregated once (``DashboardRollup``, by a
django-q2 schedule and on demand), and a request adds up at most 30 stored days, today's closed hours and a live
aggregate of the current hour (index range scans). Percentiles come from fixed histograms (ten buckets per decade),
so they are approximate to within a bucket (±12%); the page says so. What is live by nature (queue depths, the
workflow map, open escalations past their deadline) is counted over partial indexes of the open rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Count, DecimalField, F, FloatField, Func, IntegerField, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from governance.selectors import wilson_interval
from operations.models import (
    Case,
    CaseStatus,
    DashboardRollup,
    Escalation,
    EscalationStatus,
    Resolution,
    Step,
    StepRun,
    StepRunStatus,
    WaitReason,
    Workflow,
    WorkflowStatus,
)

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
DAYS = 30  # the dashboard's longest window, in calendar days (UTC) including today
AGENT_DAYS = 7  # latency per step and the agent table
# a period is aggregated once it ended this long ago: a transaction that started inside it has committed by then
ROLLUP_GRACE = timedelta(minutes=5)
BUCKETS_PER_DECADE = 10
CYCLE_FLOOR_S, LATENCY_FLOOR_MS = 1.0, 0.01  # smaller values count in the lowest bucket
DECIDED = [Resolution.APPROVE, Resolution.AMEND, Resolution.REJECT]
OVERRIDDEN = [Resolution.AMEND, Resolution.REJECT]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without observations (the dashboard shows
    a dash rather than governance's uninformative 0..1)."""
    return wilson_interval(successes, n, z) if n > 0 else None


# --- histograms ------------------------------------------------------------------------------------------------------


class Seconds(Func):
    """end - start in seconds (float), on PostgreSQL and SQLite."""

    output_field = FloatField()
    arity = 2

    def as_sql(self, compiler, connection, **extra):
        (end, end_params), (start, start_params) = (compiler.compile(e) for e in self.source_expressions)
        if connection.vendor == "postgresql":
            return f"EXTRACT(EPOCH FROM ({end} - {start}))", (*end_params, *start_params)
        return f"((julianday({end}) - julianday({start})) * 86400.0)", (*end_params, *start_params)


class LogBucket(Func):
    """The histogram bucket of a positive value: floor(10 · log10(max(value, floor))), ten buckets per decade."""

    output_field = IntegerField()
    arity = 1

    def __init__(self, expression, floor: float):
        super().__init__(expression)
        self.floor = float(floor)

    def as_sql(self, compiler, connection, **extra):
        value, params = compiler.compile(self.source_expressions[0])
        floor = repr(self.floor)
        return (
            f"CAST(FLOOR({BUCKETS_PER_DECADE} * LOG10(CASE WHEN ({value}) > {floor} THEN ({value}) ELSE {floor} END))"
            " AS INTEGER)",
            (*params, *params),
        )


def percentile(histogram: dict, q: float) -> float | None:
    """The q-quantile of a log-bucket histogram ({bucket: count}), interpolated geometrically inside its bucket."""
    counts = sorted((int(b), n) for b, n in histogram.items() if n)
    total = sum(n for _, n in counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for bucket, n in counts:
        if rank <= seen + n:
            low = 10 ** (bucket / BUCKETS_PER_DECADE)
            return low * 10 ** (max(0.0, min(1.0, (rank - seen) / n)) / BUCKETS_PER_DECADE)
        seen += n
    return 10 ** ((counts[-1][0] + 1) / BUCKETS_PER_DECADE)


# --- the additive parts of one period --------------------------------------------------------------------------------


def period_parts(start: datetime, end: datetime) -> dict:
    """Everything the dashboard counts about [start, end), as sums that add up across periods. Each query is an index
    range scan over the period (cases by created_at / finished_at, escalations by created_at / resolved_at /
    sla_breached_at, step runs by started_at)."""
    cases = Case.objects.order_by()
    finished = {
        (status, bucket): n
        for status, bucket, n in cases.filter(finished_at__gte=start, finished_at__lt=end)
        .annotate(bucket=LogBucket(Seconds("finished_at", "created_at"), CYCLE_FLOOR_S))
        .values_list("status", "bucket")
        .annotate(n=Count("id"))
    }
    touched = (
        Escalation.objects.filter(
            case__status=CaseStatus.COMPLETED, case__finished_at__gte=start, case__finished_at__lt=end
        )
        .values("case_id")
        .distinct()
        .count()
    )
    escalations = Escalation.objects.order_by()
    resolved = {}
    for agent_key, resolution, n, on_time in (
        escalations.filter(status=EscalationStatus.RESOLVED, resolved_at__gte=start, resolved_at__lt=end)
        .values_list("step__agent_key", "resolution")
        .annotate(n=Count("id"), on_time=Count("id", filter=Q(resolved_at__lte=F("sla_deadline"))))
    ):
        resolved[f"{agent_key}|{resolution}"] = {"n": n, "on_time": on_time}
    steps, agents = {}, {}
    amount = Cast(KT("proposal__amount"), DecimalField(max_digits=16, decimal_places=2))
    for step_id, agent_key, status, bucket, n, ms, tokens_in, tokens_out, cost, spent in (
        StepRun.objects.order_by()
        .filter(started_at__gte=start, started_at__lt=end)
        .annotate(bucket=LogBucket("duration_ms", LATENCY_FLOOR_MS))
        .values_list("step_id", "agent_key", "status", "bucket")
        .annotate(
            n=Count("id"),
            ms=Sum("duration_ms"),
            ti=Sum("tokens_in"),
            to=Sum("tokens_out"),
            cost=Sum("cost"),
            spent=Sum(amount, filter=Q(status=StepRunStatus.SUCCEEDED)),
        )
    ):
        step = steps.setdefault(str(step_id), {"runs": 0, "ms": 0.0, "hist": {}})
        step["runs"] += n
        step["ms"] += ms or 0.0
        step["hist"][str(bucket)] = step["hist"].get(str(bucket), 0) + n
        agent = agents.setdefault(agent_key, {"runs": 0, "escalated": 0, "failed": 0, "ms": 0.0, "tokens": 0})
        agent["runs"] += n
        agent["ms"] += ms or 0.0
        agent["escalated"] += n if status == StepRunStatus.ESCALATED else 0
        agent["failed"] += n if status in (StepRunStatus.FAILED, StepRunStatus.LOST) else 0
        agent["tokens"] += (tokens_in or 0) + (tokens_out or 0)
        for key, value in (("cost", cost), ("spent", spent)):
            if value is not None:
                agent[key] = str(Decimal(agent.get(key, "0")) + value)
    return {
        "in": cases.filter(created_at__gte=start, created_at__lt=end).count(),
        "out": sum(finished.values()),
        "completed": sum(n for (status, _), n in finished.items() if status == CaseStatus.COMPLETED),
        "touched": touched,
        "cycle": _histogram((bucket, n) for (status, bucket), n in finished.items() if status == CaseStatus.COMPLETED),
        "reasons": dict(
            escalations.filter(created_at__gte=start, created_at__lt=end).values_list("reason").annotate(n=Count("id"))
        ),
        "resolved": resolved,
        "breaches": escalations.filter(sla_breached_at__gte=start, sla_breached_at__lt=end).count(),
        "qa": _qa_parts(start, end),
        "steps": steps,
        "agents": agents,
    }


def _histogram(pairs) -> dict:
    out: dict[str, int] = {}
    for bucket, n in pairs:
        out[str(bucket)] = out.get(str(bucket), 0) + n
    return out


def _qa_parts(start, end) -> dict:
    """QA reviews decided in the period: a disagreement is an error of the agent."""
    from governance.models import QAReview, QAStatus

    row = QAReview.objects.filter(
        reviewed_at__gte=start, reviewed_at__lt=end, status__in=[QAStatus.AGREED, QAStatus.DISAGREED]
    ).aggregate(n=Count("id"), errors=Count("id", filter=Q(status=QAStatus.DISAGREED)))
    return {"n": row["n"], "errors": row["errors"]}


def merge(*parts: dict) -> dict:
    """The sum of several periods' parts (numbers add, nested maps add key by key, money strings add as Decimals)."""
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                out[key] = merge(out.get(key, {}), value)
            elif isinstance(value, str):
                out[key] = str(Decimal(out.get(key, "0")) + Decimal(value))
            else:
                out[key] = out.get(key, 0) + value
    return out


# --- stored periods: closed hours of today, closed days before -------------------------------------------------------


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def day_parts(now: datetime, days: int = DAYS) -> list[tuple[datetime, dict]]:
    """(day, parts) for the last ``days`` calendar days up to ``now``: closed days and hours from the rollup (computed
    and stored now when missing), the rest live."""
    closed_before = now - ROLLUP_GRACE
    first_day = _midnight(now) - (days - 1) * DAY
    stored = {(r.period, r.start): r.parts for r in DashboardRollup.objects.filter(start__gte=first_day)}
    missing, out = [], []
    for d in range(days):
        day = first_day + d * DAY
        if day + DAY <= closed_before:
            periods = [(DashboardRollup.DAY, day, day + DAY)]
        else:
            periods = [(DashboardRollup.HOUR, day + h * HOUR, day + (h + 1) * HOUR) for h in range(24)]
        parts = []
        for period, start, end in periods:
            if start >= now:
                break
            if end > closed_before:  # still open: live, from the start of this period to now (within this day)
                parts.append(period_parts(start, min(now, day + DAY)))
                break
            if (period, start) not in stored:
                stored[(period, start)] = period_parts(start, end)
                missing.append(DashboardRollup(period=period, start=start, parts=stored[(period, start)]))
            parts.append(stored[(period, start)])
        out.append((day, merge(*parts)))
    if missing:
        DashboardRollup.objects.bulk_create(missing, ignore_conflicts=True)
    return out


def rollup_closed_periods(now: datetime | None = None) -> dict:
    """Aggregate every closed day of the dashboard's window and every closed hour of today that is not stored yet
    (the schedule's job; the dashboard does the same on demand), and forget the hours of days now stored whole."""
    import time

    now = now or timezone.now()
    t0 = time.perf_counter()
    before = DashboardRollup.objects.count()
    with transaction.atomic():
        day_parts(now)
    DashboardRollup.objects.filter(period=DashboardRollup.HOUR, start__lt=_midnight(now - ROLLUP_GRACE)).delete()
    return {"periods": DashboardRollup.objects.count() - before, "seconds": time.perf_counter() - t0}


def rollup_forget() -> int:
    """Drop every stored period (after history was loaded or rewritten behind the dashboard's back)."""
    return DashboardRollup.objects.all().delete()[0]


# --- figures from parts ----------------------------------------------------------------------------------------------


def figures_from(days: list[tuple[datetime, dict]], now: datetime) -> dict:
    """The dashboard's figures from the per-day parts of the last 30 days (oldest first)."""
    month = merge(*(p for _, p in days))
    week = merge(*(p for _, p in days[-AGENT_DAYS:]))
    today = days[-1][1] if days else {}
    series = {
        "labels": [d.date().isoformat() for d, _ in days],
        "in": [p.get("in", 0) for _, p in days],
        "out": [p.get("out", 0) for _, p in days],
    }
    completed, touched = month.get("completed", 0), month.get("touched", 0)
    resolved = month.get("resolved", {})
    decided = sum(v["n"] for k, v in resolved.items() if k.split("|")[1] in DECIDED)
    overridden = sum(v["n"] for k, v in resolved.items() if k.split("|")[1] in OVERRIDDEN)
    qa = month.get("qa", {"n": 0, "errors": 0})
    cycle = month.get("cycle", {})
    submitted = month.get("in", 0)
    reasons = sorted(month.get("reasons", {}).items(), key=lambda kv: (-kv[1], kv[0]))[:12]
    all_resolved = sum(v["n"] for v in resolved.values())
    on_time = sum(v["on_time"] for v in resolved.values())
    breaches = {
        "today": today.get("breaches", 0),
        "7d": week.get("breaches", 0),
        "30d": month.get("breaches", 0),
    }
    return {
        "now": now,
        "series": series,
        "throughput": throughput(series),
        "straight_through": {
            "total": completed,
            "untouched": completed - touched,
            "rate": (completed - touched) / completed if completed else None,
        },
        "by_reason": {
            "submitted": submitted,
            "rows": [{"reason": r, "n": n, "rate": n / submitted if submitted else None} for r, n in reasons],
        },
        "cycle": {
            "n": sum(cycle.values()),
            "p50": percentile(cycle, 0.5),
            "p95": percentile(cycle, 0.95),
            "approximate": True,
        },
        "latency": _latency(week.get("steps", {})),
        "quality": {
            "decided": decided,
            "overridden": overridden,
            "override_rate": overridden / decided if decided else None,
            "override_ci": wilson(overridden, decided),
            "qa": {
                **qa,
                "rate": qa["errors"] / qa["n"] if qa["n"] else None,
                "ci": wilson(qa["errors"], qa["n"]),
            },
        },
        "sla": {
            "resolved": all_resolved,
            "on_time": on_time,
            "compliance": on_time / all_resolved if all_resolved else None,
            "breaches": breaches,
            "open_breached": Escalation.objects.filter(status=EscalationStatus.OPEN, sla_deadline__lt=now).count(),
        },
        "agents": _agents(week, today),
    }


def throughput(series: dict) -> dict:
    """Cases in and out today, over the last 7 and 30 calendar days (UTC), summed from the daily series."""
    windows = {"today": 1, "7d": 7, "30d": 30}
    return {k: {"in": sum(series["in"][-n:]), "out": sum(series["out"][-n:])} for k, n in windows.items()}


def _latency(steps_parts: dict) -> list[dict]:
    """Agent decision time per step (StepRun.duration_ms) over 7 days: runs, mean, p50/p95 from the histogram."""
    steps = {s.pk: s for s in Step.objects.select_related("workflow").filter(pk__in=[int(k) for k in steps_parts])}
    out = []
    for step_id, part in steps_parts.items():
        step = steps.get(int(step_id))
        if step is None or not part["runs"]:
            continue
        out.append(
            {
                "step": step,
                "workflow": step.workflow.key,
                "runs": part["runs"],
                "avg_ms": part["ms"] / part["runs"],
                "p50_ms": percentile(part["hist"], 0.5),
                "p95_ms": percentile(part["hist"], 0.95),
            }
        )
    return sorted(out, key=lambda r: (r["workflow"], r["step"].position, r["step"].workflow_id))


def _agents(week: dict, today: dict) -> list[dict]:
    """Per agent over 7 days: autonomy level, decisions, escalations, agreement (approved as proposed / decided by a
    person), time and money per step, and today's use of the daily amount budget."""
    from governance.models import AgentPolicy

    runs = week.get("agents", {})
    agreement: dict[str, list[int]] = {}
    for key, value in week.get("resolved", {}).items():
        agent_key, resolution = key.split("|")
        if resolution in DECIDED:
            pair = agreement.setdefault(agent_key, [0, 0])
            pair[0] += value["n"] if resolution == Resolution.APPROVE else 0
            pair[1] += value["n"]
    spent = {k: Decimal(v["spent"]) for k, v in today.get("agents", {}).items() if Decimal(v.get("spent", "0"))}
    policies = {  # agents' general policies (a policy narrowed to one step is shown on the governance page)
        p.agent_key: p.current_version
        for p in AgentPolicy.objects.filter(step_key="").select_related("current_version")
    }
    out = []
    for key in sorted(set(runs) | set(policies)):
        version = policies.get(key)
        row = runs.get(key, {"runs": 0, "escalated": 0, "failed": 0, "ms": 0.0, "tokens": 0})
        approved, decided = agreement.get(key, (0, 0))
        budget = version.daily_amount_budget if version else None
        out.append(
            {
                "agent": key,
                "level": version.autonomy if version else "—",
                "policy_version": version.number if version else None,
                "max_amount": version.max_amount if version else None,
                "daily_budget": budget,
                "used_today": spent.get(key),
                "budget_use": (spent.get(key) or 0) / budget if budget else None,
                "runs": row["runs"],
                "escalated": row["escalated"],
                "failed": row["failed"],
                "avg_ms": row["ms"] / row["runs"] if row["runs"] else None,
                "tokens": row["tokens"],
                "cost": Decimal(row["cost"]) if "cost" in row else None,
                "agreement": approved / decided if decided else None,
                "decided": decided,
            }
        )
    return out


def workflow_map() -> list[dict]:
    """Each active workflow's steps with live counts of open cases running, waiting (parked) and escalated at each."""
    counts: dict[int, dict[str, int]] = {}
    for step_id, status, reason, n in (
        Case.objects.filter(status__in=[CaseStatus.RUNNING, CaseStatus.WAITING])
        .values_list("current_step_id", "status", "wait_reason")
        .annotate(n=Count("*"))  # not count(id): the partial index of open cases answers it alone
        .order_by()
    ):
        if step_id is None:
            continue
        kind = (
            "running" if status == CaseStatus.RUNNING else "escalated" if reason == WaitReason.ESCALATION else "waiting"
        )
        counts.setdefault(step_id, {"running": 0, "waiting": 0, "escalated": 0})[kind] += n
    workflows = Workflow.objects.filter(Q(status=WorkflowStatus.ACTIVE) | Q(steps__pk__in=list(counts))).distinct()
    out = []
    for wf in workflows.order_by("key", "-version"):
        steps = list(wf.steps.order_by("position"))
        cells = []
        peak = max([counts.get(s.pk, {}).get("escalated", 0) for s in steps] + [1])
        for s in steps:
            c = counts.get(s.pk, {"running": 0, "waiting": 0, "escalated": 0})
            cells.append(
                {
                    "step": s,
                    **c,
                    "heat": round(4 * c["escalated"] / peak) if c["escalated"] else 0,
                    "next": sorted({t for t in s.transitions.values()}),
                }
            )
        out.append({"workflow": wf, "steps": cells})
    return out


def queue_depths(escalations) -> list[dict]:
    """Open escalations per queue, from an already scoped queryset."""
    return [
        {"queue": q, "open": n, "unclaimed": u}
        for q, n, u in escalations.filter(status=EscalationStatus.OPEN)
        .values_list("queue")
        .annotate(n=Count("*"), u=Count("queue", filter=Q(claimed_by__isnull=True)))  # index-only: (queue, claimed_by)
        .order_by("queue")
    ]


CACHE_SECONDS = 10  # the page polls every 10 s; everyone shares the organisation-wide figures


def organisation_figures(now=None) -> dict:
    """The figures that are the same for every viewer: stored periods plus the live current hour."""
    now = now or timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # these are short aggregates over bounded windows: JIT compilation costs more than it saves
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        return {**figures_from(day_parts(now), now), "workflows": workflow_map()}


def dashboard(*, user, now=None) -> dict:
    """Everything the dashboard shows: organisation figures (cached for a few seconds unless ``now`` is given) and
    the queue depths of the user's own queues."""
    from django.core.cache import cache

    from operations.selectors import escalations_for

    if now is None:
        figures = cache.get("portal:dashboard")
        if figures is None:
            figures = organisation_figures()
            cache.set("portal:dashboard", figures, CACHE_SECONDS)
    else:
        figures = organisation_figures(now)
    return {**figures, "queues": queue_depths(escalations_for(user).select_related(None))}
