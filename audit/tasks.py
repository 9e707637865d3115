"""django-q2 tasks of the audit trail (thin: they hand over to the sealer and the digest exporter).

Sealing every few seconds: django-q2's scheduler looks at its schedules about every 30 s (the cluster's guard loop
calls it after 30 s of guard cycles; there is no setting for that) and its finest schedule is a minute. So the
minute schedule starts a *shift*: a task that seals every ``SELFOPS["AUDIT_SEAL_INTERVAL"]`` seconds until the
scheduler starts the next shift (it moves the schedule's ``next_run`` when it does), or at most ``shift_seconds()``.
One worker is the sealer's while a shift runs (it sleeps between runs); shifts that overlap take turns on the
sealer's lock.
"""

from django.conf import settings
from django_q.conf import Conf

from audit.digests import export_digest
from audit.sealing import seal, seal_every

SEAL_SCHEDULE = "selfops: seal audit events"


def shift_seconds() -> float:
    """How long a shift may last: under django-q2's ``retry`` (or the broker would deliver the task again while it
    runs) with room for the last run, and a little over the schedule's minute so shifts meet."""
    return max(1.0, min(float(Conf.RETRY or 60) - 15.0, 75.0))


def seal_events() -> int:
    """The sealer's shift; returns how many events it sealed."""
    from django_q.models import Schedule

    interval = float(settings.SELFOPS["AUDIT_SEAL_INTERVAL"])
    if interval >= 60:  # the minute schedule is pace enough
        return seal().sealed

    shift = Schedule.objects.filter(name=SEAL_SCHEDULE).values_list("next_run", flat=True)
    started = list(shift)
    return seal_every(interval, stop=lambda: list(shift.all()) != started, max_seconds=shift_seconds())


def export_daily_digest() -> str:
    seal()  # the digest then covers everything written up to now
    return str(export_digest())
