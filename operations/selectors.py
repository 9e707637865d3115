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
    from operations.services import _validators

    _steps.clear()
    _validators.clear()


def cases_visible_to(*, user=None, client=None):
    """Cases a caller may see. An API client: the cases it submitted, nothing else. A portal user: every case with
    the ``operations.view_case`` permission (superusers hold it), otherwise the cases with an escalation in one of
    their queues."""
    from operations.models import Case

    qs = Case.objects.select_related("workflow", "current_step")
    if client is not None:
        return qs.filter(submitted_by_client=client)
    if user is None or not user.is_authenticated:
        return qs.none()
    if user.has_perm("operations.view_case"):
        return qs
    queues = list(user.groups.values_list("name", flat=True))
    return qs.filter(pk__in=escalations_for(user).filter(queue__in=queues).values("case_id"))


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
