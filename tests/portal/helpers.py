"""Helpers of the portal tests: people in roles and queues, and escalated claims."""

from decimal import Decimal

from audit.actors import Actor
from operations import engine
from operations.models import Escalation, EscalationStatus
from tests.helpers import make_user, submit  # noqa: F401  (make_user re-exported for the portal tests)

HANDLERS, SIU = "Claims handlers", "Special investigations"


def escalate(generator, scenario: str = "over_limit", *, amount: Decimal | None = None, queue: str = "") -> Escalation:
    """Submit a claim that the engine escalates; optionally pin the amount at stake and the queue."""
    case = submit(generator.claim(scenario))
    engine.advance_case(case.pk)
    escalation = Escalation.objects.get(case=case, status=EscalationStatus.OPEN)
    changes = {}
    if amount is not None:
        proposal = dict(escalation.proposal or {})
        proposal["amount"] = str(amount)
        changes.update(amount=amount, proposal=proposal)
    if queue:
        changes["queue"] = queue
    if changes:
        Escalation.objects.filter(pk=escalation.pk).update(**changes)
        escalation.refresh_from_db()
    return escalation


def actor(user) -> Actor:
    return Actor.user(user)
