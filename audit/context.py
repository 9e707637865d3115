"""The correlation id of the current request or task, attached to every audit event written under it."""

import contextlib
import contextvars
import uuid

_correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("selfops_correlation_id", default="")


def current_correlation_id() -> str:
    return _correlation_id.get()


@contextlib.contextmanager
def correlation(correlation_id: str | None = None):
    """Run a block under a correlation id (a new one if none is given)."""
    token = _correlation_id.set(correlation_id or uuid.uuid4().hex)
    try:
        yield _correlation_id.get()
    finally:
        _correlation_id.reset(token)
