"""django-q2 tasks: thin entry points that take primitive ids and hand over to the engine or a service. Each is safe
to run twice."""

import logging

from django.conf import settings

from audit.context import correlation
from audit.sealing import seal_if_due
from operations import engine, services

log = logging.getLogger(__name__)


def advance_case(case_id: int) -> str:
    outcome = engine.advance_case(int(case_id))
    try:  # the chain is sealed every few seconds by the workers themselves (audit.tasks); never fails the task
        seal_if_due(float(settings.SELFOPS["AUDIT_SEAL_INTERVAL"]))
    except Exception:
        log.exception("sealing after a task failed; the minute schedule will seal the backlog")
    return outcome


def deliver_outbox(idempotency_key: str) -> None:
    with correlation(f"deliver-{idempotency_key}"):
        services.outbox_deliver(idempotency_key=str(idempotency_key))


def sweep() -> int:
    with correlation("sweep"):
        return services.cases_sweep()


def check_slas() -> dict:
    with correlation("sla-check"):
        return services.escalations_sla_check()


def dashboard_rollup() -> dict:
    from operations import metrics

    return metrics.rollup_closed_periods()
