"""Helpers of the portal tests: people in roles and queues, and escalated claims."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.actors import Actor
from operations import engine
from operations.models import Escalation, EscalationStatus
from tests.helpers import submit

HANDLERS, SIU = "Claims handlers", "Special investigations"


def make_user(username: str, *groups: str, **extra):
    user = get_user_model().objects.create_user(
        username, password="pw-" + username * 3, email=f"{username}@example.test", **extra
    )
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


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
