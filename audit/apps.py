from django.apps import AppConfig
from django.db.models.signals import post_migrate

SCHEDULES = [
    # (name, func, schedule_type, minutes): the minute schedule seals what the workers' own sealing (every few
    # seconds while work flows, audit.tasks) left.
    ("selfops: seal audit events", "audit.tasks.seal_events", "I", 1),
    ("selfops: export audit digest", "audit.tasks.export_daily_digest", "D", None),
]


def ensure_audit_schedules(sender, using="default", **kwargs):
    """Install the sealer and the daily digest export as django-q2 schedules (idempotent)."""
    from django_q.models import Schedule

    for name, func, schedule_type, minutes in SCHEDULES:
        defaults = {"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1, "kwargs": None}
        Schedule.objects.using(using).update_or_create(name=name, defaults=defaults)


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self):
        post_migrate.connect(ensure_audit_schedules, sender=self, dispatch_uid="audit.ensure_schedules")
