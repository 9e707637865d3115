"""django-q2 tasks of the audit trail (thin: they hand over to the sealer and the digest exporter)."""

from audit.digests import export_digest
from audit.sealing import seal


def seal_events() -> int:
    return seal().sealed


def export_daily_digest() -> str:
    seal()  # the digest then covers everything written up to now
    return str(export_digest())
