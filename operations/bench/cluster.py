"""Starting and stopping a real qcluster process group for benchmarks, and reading its memory peak."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(settings.BASE_DIR)


def database_url() -> str:
    """A DATABASE_URL naming the database this process uses (also a test database), for a subprocess."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = quote(s["USER"] or "") + (":" + quote(s["PASSWORD"]) if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def cluster_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="selfops.settings",
        DATABASE_URL=database_url(),
        Q_LOG_LEVEL="WARNING",
        SELFOPS_STEP_RETRY_BACKOFF=os.environ.get("SELFOPS_STEP_RETRY_BACKOFF", "0.5"),
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def qcluster(*, workers: int = 2, **env: str):
    """A real `manage.py qcluster` process group; killed on exit whatever happens."""
    connection.close()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=cluster_env(Q_WORKERS=str(workers), **env),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:  # the measurement is over: a few seconds to stop gracefully, then no more waiting
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def peak_rss_mb(pid: int) -> dict[int, float]:
    """Peak resident memory (VmHWM) of each process in the tree, in MB."""
    peaks = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[p] = int(line.split()[1]) / 1024
    return peaks


def wait_until(predicate, *, timeout: float, interval: float = 0.05, proc=None) -> float:
    """Poll ``predicate`` until true; return the elapsed seconds."""
    t0 = time.perf_counter()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the qcluster exited ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"not done within {timeout:.0f} s")
        time.sleep(interval)
    return time.perf_counter() - t0
