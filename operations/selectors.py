"""Reads of operations state, cached where the data is immutable."""

from __future__ import annotations

import time

from operations.models import ReferenceRecord, Step, Workflow, WorkflowStatus

_steps: dict[int, dict[str, Step]] = {}
_active: dict[str, tuple[float, Workflow | None]] = {}
ACTIVE_WORKFLOW_TTL = 2.0  # seconds


def workflow_steps(workflow_id: int) -> dict[str, Step]:
    """The steps of a workflow version by key. Installed workflow versions never change their steps, so the map is
    cached per process."""
    steps = _steps.get(workflow_id)
    if steps is None:
        steps = {s.key: s for s in Step.objects.filter(workflow_id=workflow_id).select_related("workflow")}
        _steps[workflow_id] = steps
    return steps


def active_workflow(key: str) -> Workflow | None:
    """The newest active version of a workflow: new cases are pinned to it. Remembered per process for a couple of
    seconds (submissions are the API's hot path); a newly installed version takes new cases from then on."""
    now = time.monotonic()
    hit = _active.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    workflow = Workflow.objects.filter(key=key, status=WorkflowStatus.ACTIVE).order_by("-version").first()
    _active[key] = (now + ACTIVE_WORKFLOW_TTL, workflow)
    return workflow


def forget_active_workflow(key: str) -> None:
    """This process installed a new version of ``key``: use it at once."""
    _active.pop(key, None)


def reference_lookup(namespace: str, key: str) -> dict | None:
    return ReferenceRecord.objects.filter(namespace=namespace, key=key).values_list("data", flat=True).first()


def reference_lookup_many(namespace: str, keys: list[str]) -> dict[str, dict]:
    return dict(ReferenceRecord.objects.filter(namespace=namespace, key__in=keys).values_list("key", "data"))


def escalations_for(user, *, for_action: bool = False):
    """Escalations a user may see: those of the queues (groups) they belong to; every queue for auditors, governance
    admins and superusers. ``for_action``: those they may act on (auditors and governance admins read only)."""
    from operations import roles
    from operations.models import Escalation

    qs = Escalation.objects.select_related("case", "step", "case__workflow", "claimed_by")
    if user.is_superuser:
        return qs
    if for_action and not roles.can_act(user):
        return qs.none()
    if not for_action and roles.reads_all(user):
        return qs
    return qs.filter(queue__in=sorted(roles.queue_names(user)))


def cases_for(user):
    """Cases a user may see, in the portal and the API alike: every case for operations staff (any portal role,
    or the ``operations.view_case`` permission) — the escalations on a case stay scoped by queue; for people who
    are only in queue groups, the cases escalated to one of their queues; nothing for anyone else."""
    from operations import roles
    from operations.models import Case

    qs = Case.objects.select_related("workflow", "current_step")
    if not user.is_authenticated:
        return qs.none()
    if roles.has_portal_role(user) or user.has_perm("operations.view_case"):
        return qs
    return qs.filter(pk__in=escalations_for(user).values("case_id"))


def case_timeline(*, case, visible_escalations=None) -> list:
    """Everything the audit trail holds about one case, in order, as the reader may see it: with
    ``visible_escalations`` (the escalations queryset the reader may see), the events of the case's other
    escalations are left out and human notes are dropped from the rest, so another queue's decisions do not leak
    through the case's history. Without it (internal use, auditors' dossier) the whole story."""
    from audit.models import AuditEvent
    from operations.models import Escalation

    events = list(AuditEvent.objects.filter(case_id=case.pk).order_by("id"))
    if visible_escalations is None:
        return events
    every = set(Escalation.objects.filter(case=case).values_list("pk", flat=True))
    hidden = {str(pk) for pk in every - set(visible_escalations.filter(case=case).values_list("pk", flat=True))}
    if not hidden:
        return events
    shown = []
    for event in events:
        if event.subject_type == "operations.escalation" and event.subject_id in hidden:
            continue
        if isinstance(event.data, dict) and "note" in event.data:
            event.data = {k: v for k, v in event.data.items() if k != "note"}  # a display copy; nothing is saved
        shown.append(event)
    return shown


def clear_caches() -> None:
    """Forget cached workflow data (tests, whose rolled-back ids can be reused)."""
    from operations.agents import llm, ml, rules, versions
    from operations.services import _validators

    _steps.clear()
    _active.clear()
    _validators.clear()
    rules.clear_caches()
    llm.forget_endpoint()
    ml.clear_caches()
    versions.clear_caches()


# --- portal -----------------------------------------------------------------------------------------------------


def sla_state(escalation, now=None) -> str:
    """ok / amber (under a quarter of the SLA left) / red (under an hour... or a tenth) / breached."""
    from django.utils import timezone

    if escalation.sla_deadline is None:
        return "ok"
    now = now or timezone.now()
    left = (escalation.sla_deadline - now).total_seconds()
    if left <= 0:
        return "breached"
    if left <= SLA_RED_SECONDS:
        return "red"
    if left <= SLA_AMBER_SECONDS:
        return "amber"
    return "ok"


SLA_RED_SECONDS = 3600  # under an hour left
SLA_AMBER_SECONDS = 4 * 3600  # under four hours left


def similar_escalations(*, user, escalation, limit: int = 10):
    """Past, resolved escalations of the same step and reason with an amount within ±20%: how people decided."""
    from decimal import Decimal

    from operations.models import EscalationStatus

    qs = (
        escalations_for(user)
        .filter(step=escalation.step_id, reason=escalation.reason, status=EscalationStatus.RESOLVED)
        .exclude(pk=escalation.pk)
    )
    if escalation.amount is not None:
        qs = qs.filter(amount__gte=escalation.amount * Decimal("0.8"), amount__lte=escalation.amount * Decimal("1.2"))
    else:
        qs = qs.filter(amount__isnull=True)
    return list(qs.order_by("-resolved_at", "-id")[:limit])


def case_detail_parts(*, user, case) -> dict:
    """What a case page shows: its step runs (proposals and verdicts), its escalations the user may see (human
    decisions), payments and messages owed or sent, and the timeline."""
    from operations.models import OutboxEntry

    return {
        "runs": list(case.step_runs.select_related("step").order_by("id")),
        "escalations": list(escalations_for(user).filter(case=case).order_by("id")),
        "outbox": list(OutboxEntry.objects.filter(case=case).order_by("id")),
        "timeline": case_timeline(case=case, visible_escalations=escalations_for(user)),
    }


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


def cases_visible_to(*, user=None, client=None):
    """Cases a caller may see. An API client: the cases it submitted, nothing else. A portal user: what the portal
    shows them (``cases_for``)."""
    from operations.models import Case

    qs = Case.objects.select_related("workflow", "current_step")
    if client is not None:
        return qs.filter(submitted_by_client=client)
    if user is None or not user.is_authenticated:
        return qs.none()
    return cases_for(user)  # the portal's rule: an API session sees what the portal shows


def escalations_visible_to(*, user=None, client=None):
    """Escalations a caller may see and act on: those of its queues (a client's configured queues, a user's
    groups; every queue for superusers)."""
    from operations.models import Escalation

    if client is not None:
        return Escalation.objects.select_related("case", "step", "case__workflow").filter(
            queue__in=list(client.queues or [])
        )
    if user is None or not user.is_authenticated:
        return Escalation.objects.none()
    return escalations_for(user)
