"""Reads of operations state, cached where the data is immutable."""

from __future__ import annotations

from operations.models import ReferenceRecord, Step, Workflow, WorkflowStatus

_steps: dict[int, dict[str, Step]] = {}


def workflow_steps(workflow_id: int) -> dict[str, Step]:
    """The steps of a workflow version by key. Installed workflow versions never change their steps, so the map is
    cached per process."""
    steps = _steps.get(workflow_id)
    if steps is None:
        steps = {s.key: s for s in Step.objects.filter(workflow_id=workflow_id).select_related("workflow")}
        _steps[workflow_id] = steps
    return steps


def active_workflow(key: str) -> Workflow | None:
    """The newest active version of a workflow: new cases are pinned to it."""
    return Workflow.objects.filter(key=key, status=WorkflowStatus.ACTIVE).order_by("-version").first()


def reference_lookup(namespace: str, key: str) -> dict | None:
    return ReferenceRecord.objects.filter(namespace=namespace, key=key).values_list("data", flat=True).first()


def reference_lookup_many(namespace: str, keys: list[str]) -> dict[str, dict]:
    return dict(ReferenceRecord.objects.filter(namespace=namespace, key__in=keys).values_list("key", "data"))


def escalations_for(user):
    """Escalations a user may see: those of the queues (groups) they belong to; everything for superusers."""
    from operations.models import Escalation

    qs = Escalation.objects.select_related("case", "step", "case__workflow")
    if user.is_superuser:
        return qs
    return qs.filter(queue__in=list(user.groups.values_list("name", flat=True)))


def case_timeline(*, case) -> list:
    """Everything the audit trail holds about one case, in order."""
    from audit.models import AuditEvent

    return list(AuditEvent.objects.filter(case_id=case.pk).order_by("id"))


def clear_caches() -> None:
    """Forget cached workflow data (tests, whose rolled-back ids can be reused)."""
    from operations.agents import ml, rules, versions
    from operations.services import _validators

    _steps.clear()
    _validators.clear()
    rules.clear_caches()
    ml.clear_caches()
    versions.clear_caches()


def agent_stats(*, since=None) -> list[dict]:
    """Per agent and version since ``since`` (default: the last 24 hours): steps, failures, escalations, time per step
    and, for language-model agents, tokens and money. One aggregate query; the dashboard's agent table reads it."""
    from datetime import timedelta

    from django.db.models import Avg, Count, Max, Q, Sum
    from django.utils import timezone

    from operations.models import StepRun, StepRunStatus

    since = since or timezone.now() - timedelta(days=1)
    return list(
        StepRun.objects.filter(started_at__gte=since)
        .values("agent_key", "agent_version")
        .annotate(
            steps=Count("id"),
            failed=Count("id", filter=Q(status__in=(StepRunStatus.FAILED, StepRunStatus.LOST))),
            escalated=Count("id", filter=Q(status=StepRunStatus.ESCALATED)),
            avg_ms=Avg("duration_ms"),
            max_ms=Max("duration_ms"),
            tokens_in=Sum("tokens_in"),
            tokens_out=Sum("tokens_out"),
            cost=Sum("cost"),
        )
        .order_by("agent_key", "agent_version")
    )
