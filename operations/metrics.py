"""Dashboard figures, computed with SQL aggregates over bounded time windows (indexes on created_at, finished_at,
started_at and open statuses keep them fast on a million cases). Reads only; scoped by the caller where it matters
(queue depths follow the user's queues)."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Avg, Count, DecimalField, F, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, TruncDate
from django.utils import timezone

from governance.selectors import wilson_interval
from operations.models import (
    Case,
    CaseStatus,
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

WINDOWS = (("today", None), ("7d", 7), ("30d", 30))
CYCLE_SAMPLE = 5000  # SQLite has no percentile_cont: percentiles from the most recent completions


def _starts(now):
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {name: (today if days is None else now - timedelta(days=days)) for name, days in WINDOWS}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without observations (the dashboard shows
    a dash rather than governance's uninformative 0..1)."""
    return wilson_interval(successes, n, z) if n > 0 else None


def throughput(series: dict) -> dict:
    """Cases in and out today, over the last 7 and 30 calendar days (UTC), summed from the daily series."""
    windows = {"today": 1, "7d": 7, "30d": 30}
    return {k: {"in": sum(series["in"][-n:]), "out": sum(series["out"][-n:])} for k, n in windows.items()}


def daily_series(now, days: int = 30) -> dict:
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    cin = dict(
        Case.objects.filter(created_at__gte=since)
        .annotate(d=TruncDate("created_at"))
        .values_list("d")
        .annotate(n=Count("id"))
        .order_by()
    )
    cout = dict(
        Case.objects.filter(finished_at__gte=since)
        .annotate(d=TruncDate("finished_at"))
        .values_list("d")
        .annotate(n=Count("id"))
        .order_by()
    )
    labels = [(since + timedelta(days=i)).date() for i in range(days)]
    return {
        "labels": [d.isoformat() for d in labels],
        "in": [cin.get(d, 0) for d in labels],
        "out": [cout.get(d, 0) for d in labels],
    }


def straight_through(since) -> dict:
    """Completed cases that no human touched (no escalation at all), out of all completed in the window. Counted as
    all completed minus those with an escalation, joined from the (much smaller) escalation side."""
    completed = Case.objects.filter(status=CaseStatus.COMPLETED, finished_at__gte=since)
    total = completed.count()
    touched = (
        Escalation.objects.filter(case__status=CaseStatus.COMPLETED, case__finished_at__gte=since)
        .values("case_id")
        .distinct()
        .count()
    )
    return {"total": total, "untouched": total - touched, "rate": ((total - touched) / total) if total else None}


def escalations_by_reason(since) -> dict:
    submitted = Case.objects.filter(created_at__gte=since).count()
    rows = list(
        Escalation.objects.filter(created_at__gte=since)
        .values_list("reason")
        .annotate(n=Count("id"))
        .order_by("-n", "reason")[:12]
    )
    return {
        "submitted": submitted,
        "rows": [{"reason": r, "n": n, "rate": (n / submitted) if submitted else None} for r, n in rows],
    }


def cycle_time(since) -> dict:
    """p50 and p95 of submission-to-completion, in seconds."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            sql = (
                "SELECT count(*),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))"
                " FROM operations_case WHERE status = %s AND finished_at >= %s"
            )
            cursor.execute(sql, [CaseStatus.COMPLETED, since])
            n, p50, p95 = cursor.fetchone()
        return {"n": n, "p50": p50, "p95": p95, "sampled": False}
    rows = list(
        Case.objects.filter(status=CaseStatus.COMPLETED, finished_at__gte=since)
        .order_by("-finished_at")
        .values_list("created_at", "finished_at")[:CYCLE_SAMPLE]
    )
    seconds = sorted((f - c).total_seconds() for c, f in rows)
    return {"n": len(seconds), "p50": _pct(seconds, 0.5), "p95": _pct(seconds, 0.95), "sampled": True}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def step_latency(since) -> list[dict]:
    """Agent decision time per step (StepRun.duration_ms): runs, mean, and on PostgreSQL p50/p95."""
    steps = {s.pk: s for s in Step.objects.select_related("workflow")}
    rows = {
        step_id: {"runs": n, "avg_ms": avg}
        for step_id, n, avg in StepRun.objects.filter(started_at__gte=since)
        .values_list("step_id")
        .annotate(n=Count("id"), avg=Avg("duration_ms"))
        .order_by()
    }
    if rows and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            sql = (
                "SELECT step_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)"
                " FROM operations_steprun WHERE started_at >= %s GROUP BY step_id"
            )
            cursor.execute(sql, [since])
            for step_id, p50, p95 in cursor.fetchall():
                rows[step_id].update(p50_ms=p50, p95_ms=p95)
    out = []
    for step_id, row in rows.items():
        step = steps.get(step_id)
        if step is not None:
            out.append({"step": step, "workflow": step.workflow.key, **row})
    return sorted(out, key=lambda r: (r["workflow"], r["step"].position, r["step"].workflow_id))


def quality(since) -> dict:
    """Override rate: decided escalations whose resolution changed the agent's proposal (amend, reject). QA-sampled
    error rate when governance records QA reviews."""
    decided = Escalation.objects.filter(
        status=EscalationStatus.RESOLVED,
        resolved_at__gte=since,
        resolution__in=[Resolution.APPROVE, Resolution.AMEND, Resolution.REJECT],
    ).aggregate(n=Count("id"), overridden=Count("id", filter=Q(resolution__in=[Resolution.AMEND, Resolution.REJECT])))
    n, k = decided["n"], decided["overridden"]
    return {
        "decided": n,
        "overridden": k,
        "override_rate": (k / n) if n else None,
        "override_ci": wilson(k, n),
        "qa": qa_error_rate(since),
    }


def qa_error_rate(since) -> dict | None:
    """The QA-sampled error rate with its Wilson interval, if the governance QA model exists."""
    try:
        from governance.models import QAReview  # type: ignore[attr-defined]
    except ImportError:
        return None
    fields = {f.name for f in QAReview._meta.get_fields()}
    if not {"created_at", "is_error"} <= fields:
        return None
    row = QAReview.objects.filter(created_at__gte=since).aggregate(
        n=Count("id"), errors=Count("id", filter=Q(is_error=True))
    )
    return {**row, "rate": row["errors"] / row["n"] if row["n"] else None, "ci": wilson(row["errors"], row["n"])}


def sla(now, since) -> dict:
    resolved = Escalation.objects.filter(status=EscalationStatus.RESOLVED, resolved_at__gte=since).aggregate(
        n=Count("id"), on_time=Count("id", filter=Q(resolved_at__lte=F("sla_deadline")))
    )
    starts = _starts(now)
    breaches = Escalation.objects.filter(sla_breached_at__gte=since).aggregate(
        **{k: Count("id", filter=Q(sla_breached_at__gte=v)) for k, v in starts.items()}
    )
    open_breached = Escalation.objects.filter(status=EscalationStatus.OPEN, sla_deadline__lt=now).count()
    return {
        "resolved": resolved["n"],
        "on_time": resolved["on_time"],
        "compliance": resolved["on_time"] / resolved["n"] if resolved["n"] else None,
        "breaches": breaches,
        "open_breached": open_breached,
    }


def queue_depths(escalations) -> list[dict]:
    """Open escalations per queue, from an already scoped queryset."""
    return [
        {"queue": q, "open": n, "unclaimed": u}
        for q, n, u in escalations.filter(status=EscalationStatus.OPEN)
        .values_list("queue")
        .annotate(n=Count("id"), u=Count("id", filter=Q(claimed_by__isnull=True)))
        .order_by("queue")
    ]


def agents(since) -> list[dict]:
    """Per agent: autonomy level, decisions, escalations, agreement (approved as proposed / decided), limits."""
    runs = {
        key: {"runs": n, "escalated": e, "failed": f, "avg_ms": avg, "tokens": (ti or 0) + (to or 0), "cost": cost}
        for key, n, e, f, avg, ti, to, cost in StepRun.objects.filter(started_at__gte=since)
        .values_list("agent_key")
        .annotate(
            n=Count("id"),
            e=Count("id", filter=Q(status=StepRunStatus.ESCALATED)),
            f=Count("id", filter=Q(status__in=[StepRunStatus.FAILED, StepRunStatus.LOST])),
            avg=Avg("duration_ms"),
            ti=Sum("tokens_in"),
            to=Sum("tokens_out"),
            cost=Sum("cost"),
        )
        .order_by()
    }
    agreement = {
        key: (a, d)
        for key, a, d in Escalation.objects.filter(
            status=EscalationStatus.RESOLVED,
            resolved_at__gte=since,
            resolution__in=[Resolution.APPROVE, Resolution.AMEND, Resolution.REJECT],
        )
        .values_list("step__agent_key")
        .annotate(a=Count("id", filter=Q(resolution=Resolution.APPROVE)), d=Count("id"))
        .order_by()
    }
    used_today = budget_used_today(timezone.now())
    from governance.models import AgentPolicy

    policies = {  # agents' general policies (a policy narrowed to one step is shown on the governance page)
        p.agent_key: p.current_version
        for p in AgentPolicy.objects.filter(step_key="").select_related("current_version")
    }
    out = []
    for key in sorted(set(runs) | set(policies)):
        version = policies.get(key)
        a, d = agreement.get(key, (0, 0))
        row = runs.get(key, {"runs": 0, "escalated": 0, "failed": 0, "avg_ms": None, "tokens": 0, "cost": None})
        out.append(
            {
                "agent": key,
                "level": version.autonomy if version else "—",
                "policy_version": version.number if version else None,
                "max_amount": version.max_amount if version else None,
                "daily_budget": version.daily_amount_budget if version else None,
                "used_today": used_today.get(key),
                "budget_use": (used_today.get(key) or 0) / version.daily_amount_budget
                if version and version.daily_amount_budget
                else None,
                **row,
                "agreement": (a / d) if d else None,
                "decided": d,
            }
        )
    return out


def budget_used_today(now) -> dict[str, Decimal]:
    """The amounts each agent decided on its own today (UTC): what its daily amount budget is consumed by."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    amount = Cast(KT("proposal__amount"), DecimalField(max_digits=16, decimal_places=2))
    return {
        key: total
        for key, total in StepRun.objects.filter(started_at__gte=today, status=StepRunStatus.SUCCEEDED)
        .exclude(proposal__amount=None)
        .values_list("agent_key")
        .annotate(total=Sum(amount))
        .order_by()
        if total
    }


def workflow_map() -> list[dict]:
    """Each active workflow's steps with live counts of open cases running, waiting (parked) and escalated at each."""
    counts: dict[int, dict[str, int]] = {}
    for step_id, status, reason, n in (
        Case.objects.filter(status__in=[CaseStatus.RUNNING, CaseStatus.WAITING])
        .values_list("current_step_id", "status", "wait_reason")
        .annotate(n=Count("id"))
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


CACHE_SECONDS = 10  # the page polls every 10 s; everyone shares the organisation-wide figures


def organisation_figures(now=None) -> dict:
    """The figures that are the same for every viewer, computed in one read-only transaction."""
    from django.db import transaction

    now = now or timezone.now()
    since = now - timedelta(days=30)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # these are short aggregates over bounded windows: JIT compilation costs more than it saves
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        return {
            "now": now,
            "series": (series := daily_series(now)),
            "throughput": throughput(series),
            "straight_through": straight_through(since),
            "by_reason": escalations_by_reason(since),
            "cycle": cycle_time(since),
            "latency": step_latency(now - timedelta(days=7)),
            "quality": quality(since),
            "sla": sla(now, since),
            "agents": agents(now - timedelta(days=7)),
            "workflows": workflow_map(),
        }


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
