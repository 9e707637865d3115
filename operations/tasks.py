"""django-q2 tasks: thin entry points that take primitive ids and hand over to the engine or a service. Each is safe
to run twice."""

from audit.context import correlation
from operations import engine, services


def advance_case(case_id: int) -> str:
    return engine.advance_case(int(case_id))


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
