from django.apps import AppConfig
from django.db.models.signals import post_migrate

SCHEDULES = [
    # (name, func, schedule_type, minutes): django-q2's scheduler wakes about every 30 s; the sealer's schedule starts
    # a shift a minute that seals every few seconds (audit.tasks).
    ("selfops: seal audit events", "audit.tasks.seal_events", "I", 1),
    ("selfops: export audit digest", "audit.tasks.export_daily_digest", "D", None),
]


def ensure_audit_schedules(sender, using="default", **kwargs):
    """Install the sealer and the daily digest export as django-q2 schedules (idempotent)."""
    from django_q.models import Schedule

    from audit.tasks import shift_seconds

    for name, func, schedule_type, minutes in SCHEDULES:
        defaults = {"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1}
        if func == "audit.tasks.seal_events":  # the shift outlasts the cluster's default task timeout
            defaults["kwargs"] = repr({"q_options": {"timeout": int(shift_seconds()) + 10}})
        Schedule.objects.using(using).update_or_create(name=name, defaults=defaults)


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self):
        post_migrate.connect(ensure_audit_schedules, sender=self, dispatch_uid="audit.ensure_schedules")
