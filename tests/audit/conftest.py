import pytest
from django.db import connection

from audit import triggers
from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record


def record(n: int = 1, **kwargs) -> list:
    """Write ``n`` plain events through the service (each in the caller's transaction)."""
    defaults = {
        "actor": Actor.system("test"),
        "action": AuditAction.REFERENCE_LOADED,
        "subject_type": "test.thing",
    }
    return [
        audit_record(**{**defaults, "subject_id": str(i), "data": {"i": i, "amount": "12.50", "note": "é"}, **kwargs})
        for i in range(n)
    ]


@pytest.fixture
def no_triggers(db):
    """Lift the append-only triggers for a tamper test (inside the test's transaction: rolled back after it)."""
    triggers.remove(connection)
    yield
    triggers.install(connection)
