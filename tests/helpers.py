"""Helpers shared by tests: submitting demo claims and running the engine in-process."""

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
