"""Receivers: how operations reacts to governance and to migrations, without governance importing operations."""

from audit.actors import SYSTEM
from operations.models import WaitReason

SCHEDULES = [
    # (name, func, minutes)
    ("selfops: sweep stale cases", "operations.tasks.sweep", 1),
    ("selfops: escalation SLA breaches", "operations.tasks.check_slas", 1),
    ("selfops: retry due webhook deliveries", "operations.api.tasks.deliver_due_webhooks", 1),
    ("selfops: forget idempotency keys older than 48 h", "operations.api.tasks.idempotency_cleanup", 60),
    ("selfops: dashboard rollup of closed hours and days", "operations.tasks.dashboard_rollup", 5),
]


def resume_after_stop(sender, scope, target, **kwargs):
    from operations.services import cases_resume_parked

    cases_resume_parked(reason=WaitReason.STOPPED, actor=SYSTEM)


def ensure_schedules(sender, using="default", **kwargs):
    """Install the periodic tasks (idempotent), so that `migrate` on a fresh database leaves a working cluster."""
    from django_q.models import Schedule

    for name, func, minutes in SCHEDULES:
        Schedule.objects.using(using).update_or_create(
            name=name, defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1}
        )
