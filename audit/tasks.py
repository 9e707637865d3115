"""django-q2 tasks of the audit trail (thin: they hand over to the sealer and the digest exporter).

Sealing every few seconds: django-q2's finest schedule is a minute (its scheduler wakes about every 30 s). So the
workers seal as they go: after each engine task a worker seals the backlog when it has not done so for
``SELFOPS["AUDIT_SEAL_INTERVAL"]`` seconds and no other sealer is at work (``audit.sealing.seal_if_due``); the
minute schedule seals what is left when no work flows. No worker is held by the sealer.
"""

from audit.digests import export_digest
from audit.sealing import seal

SEAL_SCHEDULE = "selfops: seal audit events"


def seal_events() -> int:
    """The minute schedule: seal everything unsealed now; returns how many events it sealed."""
    return seal().sealed


def export_daily_digest() -> str:
    seal()  # the digest then covers everything written up to now
    return str(export_digest())
