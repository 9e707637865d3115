"""Handing work to django-q2 workers.

With the ORM broker the task row is written inside the caller's transaction: the task commits or rolls back with the
state change that needs it, so no committed case is ever left without its task. With Redis the enqueue waits for
the commit, and the sweeper covers a crash between commit and enqueue.
"""

from django.conf import settings
from django.db import transaction
from django_q.tasks import async_task


def _uses_orm_broker() -> bool:
    return "orm" in settings.Q_CLUSTER


def enqueue(func: str, *args, group: str = "") -> None:
    options = {"group": group} if group else {}
    if _uses_orm_broker():
        async_task(func, *args, **options)
    else:
        transaction.on_commit(lambda: async_task(func, *args, **options))


def enqueue_advance(case_id: int) -> None:
    enqueue("operations.tasks.advance_case", case_id)


def enqueue_delivery(idempotency_key: str) -> None:
    enqueue("operations.tasks.deliver_outbox", idempotency_key)
