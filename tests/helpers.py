"""Helpers shared by tests: people in roles and queues, submitting demo claims, running the engine in-process."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit.actors import Actor
from operations.engine import advance_case
from operations.models import Case, CaseStatus
from operations.services import case_submit

END_STATE = {CaseStatus.COMPLETED: "completed", CaseStatus.REJECTED: "rejected", CaseStatus.WAITING: "escalated"}


def submit(claim, actor=None) -> Case:
    return case_submit(
        workflow_key="claims", reference=claim.reference, payload=claim.payload, actor=actor or Actor.system("test")
    )


def settle(*case_ids: int, rounds: int = 20) -> None:
    """Advance the given cases in-process until none is running (as workers would)."""
    for _ in range(rounds):
        running = list(Case.objects.filter(pk__in=case_ids, status=CaseStatus.RUNNING).values_list("pk", flat=True))
        if not running:
            return
        for pk in running:
            advance_case(pk)
    raise AssertionError(f"cases still running after {rounds} rounds")


def make_user(username: str, *groups: str, **extra):
    """A user in the given groups (roles and queues)."""
    user = get_user_model().objects.create_user(
        username, password="pw-" + username * 3, email=f"{username}@example.test", **extra
    )
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


def senior_user(username: str):
    """A senior supervisor of both claims queues: may resolve any demo escalation."""
    return make_user(username, "Senior supervisor", "Claims handlers", "Special investigations")
