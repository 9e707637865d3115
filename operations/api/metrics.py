"""Operational figures: the summary the API returns, and a Prometheus collector computed from the database at scrape
time (so every web process reports the same numbers, with no multiprocess directory to manage)."""

from __future__ import annotations

import math
from datetime import timedelta

from django.db.models import Count, DurationField, Exists, ExpressionWrapper, F, OuterRef, Q, Sum
from django.utils import timezone
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily

from operations.models import Case, CaseStatus, Escalation, EscalationStatus, StepRun

FINISHED = (CaseStatus.COMPLETED, CaseStatus.REJECTED)
STEP_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


def metrics_summary(*, window: timedelta = timedelta(days=7), now=None) -> dict:
    """Cases by status (all time); over cases finished in ``window``: the straight-through rate (finished without
    any escalation) and cycle time p50/p95, computed in SQL (an ordered OFFSET read, on PostgreSQL and SQLite)."""
    now = now or timezone.now()
    by_status = dict(Case.objects.values_list("status").annotate(n=Count("id")).order_by())
    finished = Case.objects.filter(status__in=FINISHED, finished_at__gte=now - window)
    counts = finished.aggregate(
        n=Count("id"),
        straight=Count("id", filter=~Q(Exists(Escalation.objects.filter(case=OuterRef("pk"))))),
    )
    n = counts["n"]
    durations = finished.annotate(
        cycle=ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    ).order_by("cycle")

    def percentile(p: float) -> float | None:
        if not n:
            return None
        value = durations.values_list("cycle", flat=True)[max(0, min(n - 1, math.ceil(p * n) - 1))]
        return round(value.total_seconds(), 3)

    open_by_reason = dict(
        Escalation.objects.filter(status=EscalationStatus.OPEN).values_list("reason").annotate(n=Count("id")).order_by()
    )
    return {
        "cases_by_status": {s: by_status.get(s, 0) for s in CaseStatus.values},
        "cases_total": sum(by_status.values()),
        "straight_through_rate": round(counts["straight"] / n, 4) if n else None,
        "escalations_open_by_reason": open_by_reason,
        "cycle_time_seconds_p50": percentile(0.5),
        "cycle_time_seconds_p95": percentile(0.95),
        "finished_cases": n,
    }


def _queue_depth() -> int:
    from django_q.brokers import get_broker

    return int(get_broker().queue_size() or 0)


def _clusters() -> list:
    from django_q.status import Stat

    try:
        return list(Stat.get_all())
    except Exception:  # a cache that is not shared or not reachable reports no cluster, not an error
        return []


class SelfopsCollector:
    """Gauges and a histogram read from the database at every scrape."""

    def __init__(self, step_window: timedelta = timedelta(hours=1)):
        self.step_window = step_window

    def collect(self):
        cases = GaugeMetricFamily("selfops_cases", "Cases by status.", labels=["status"])
        by_status = dict(Case.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in CaseStatus.values:
            cases.add_metric([status], by_status.get(status, 0))
        yield cases

        escalations = GaugeMetricFamily("selfops_escalations_open", "Open escalations by reason.", labels=["reason"])
        for reason, n in (
            Escalation.objects.filter(status=EscalationStatus.OPEN).values_list("reason").annotate(n=Count("id"))
        ).order_by():
            escalations.add_metric([reason], n)
        yield escalations

        yield GaugeMetricFamily("selfops_queue_depth", "Tasks waiting in the django-q2 broker.", value=_queue_depth())

        clusters = _clusters()
        yield GaugeMetricFamily("selfops_worker_clusters", "django-q2 clusters reporting a heartbeat.", len(clusters))
        heartbeat = GaugeMetricFamily(
            "selfops_worker_heartbeat_timestamp_seconds",
            "Last heartbeat of each django-q2 cluster (unix time).",
            labels=["cluster", "host"],
        )
        for stat in clusters:
            heartbeat.add_metric([str(stat.cluster_id), str(stat.host)], stat.timestamp.timestamp())
        yield heartbeat

        yield self._step_latency()

    def _step_latency(self):
        histogram = HistogramMetricFamily(
            "selfops_step_duration_seconds",
            f"Duration of step runs finished in the last {int(self.step_window.total_seconds())} s, by agent.",
            labels=["agent"],
        )
        aggregates = {f"le_{b}": Count("id", filter=Q(duration_ms__lte=b)) for b in STEP_BUCKETS_MS}
        rows = (
            StepRun.objects.filter(finished_at__gte=timezone.now() - self.step_window)
            .values("agent_key")
            .annotate(n=Count("id"), total=Sum("duration_ms"), **aggregates)
            .order_by("agent_key")
        )
        for row in rows:
            buckets = [(str(b / 1000), row[f"le_{b}"]) for b in STEP_BUCKETS_MS] + [("+Inf", row["n"])]
            histogram.add_metric([row["agent_key"]], buckets, sum_value=(row["total"] or 0) / 1000)
        return histogram


def prometheus_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SelfopsCollector())
    return registry
