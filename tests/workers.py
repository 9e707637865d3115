"""Running real django-q2 clusters against the test database, for integration and fault tests."""

from __future__ import annotations

import subprocess
import time

from operations.bench.cluster import cluster_env, database_url, qcluster  # noqa: F401  (re-exported for tests)


def wait_until(predicate, *, timeout: float, interval: float = 0.5, proc: subprocess.Popen | None = None) -> None:
    """Poll until ``predicate`` holds; fail with the worker's output if it died, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            output = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"the worker process exited with {proc.returncode}:\n{output[-3000:]}")
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f} s")
