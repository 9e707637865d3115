"""Running real django-q2 clusters against the test database, for integration and fault tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """A DATABASE_URL naming the test database this process uses, for a subprocess to share it."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="selfops.settings",
        DATABASE_URL=test_database_url(),
        SELFOPS_STEP_RETRY_BACKOFF="0",
        Q_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def qcluster(*, workers: int = 2, **env: str):
    """A real `manage.py qcluster` process group; killed on exit whatever happens."""
    connection.close()  # SQLite: let the subprocess take write locks freely
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=subprocess_env(Q_WORKERS=str(workers), **env),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_until(predicate, *, timeout: float, interval: float = 0.5, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"the worker process exited with {proc.returncode}:\n{output[-3000:]}")
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f} s")
