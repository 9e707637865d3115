"""A test-only pack for the fault tests (listed in SELFOPS_PACKS of the worker subprocesses, never in production).

It wraps some claims agents so that each call
- writes a marker file named by the worker's pid while the agent runs (SELFOPS_TEST_MARK_DIR), so a test can SIGKILL
  a worker that is provably in the middle of a step, and
- appends one line per call to a trace file of its cluster (SELFOPS_TEST_TRACE_DIR, SELFOPS_TEST_CLUSTER), so a test
  can tell which cluster did the work,
- lingers SELFOPS_TEST_AGENT_DELAY seconds before answering, so kills land mid-step.
"""

import os
import time
from pathlib import Path

import operations.packs.claims  # noqa: F401  (the agents this pack wraps register first)
from operations.agents import agent, get_agent

MARK_DIR = os.environ.get("SELFOPS_TEST_MARK_DIR", "")
TRACE_DIR = os.environ.get("SELFOPS_TEST_TRACE_DIR", "")
CLUSTER = os.environ.get("SELFOPS_TEST_CLUSTER", "cluster")
DELAY = float(os.environ.get("SELFOPS_TEST_AGENT_DELAY", "0"))
SLOW_AGENTS = [k for k in os.environ.get("SELFOPS_TEST_SLOW_AGENTS", "").split(",") if k]


def _wrap(original):
    def lingering(ctx):
        pid = os.getpid()
        if TRACE_DIR:
            with open(Path(TRACE_DIR) / f"{CLUSTER}-{pid}.log", "a") as trace:
                trace.write(f"{ctx.case_id} {ctx.step_key} {ctx.attempt}\n")
        mark = Path(MARK_DIR) / str(pid) if MARK_DIR else None
        if mark is not None:
            mark.write_text(f"{ctx.case_id} {ctx.step_key}")
        try:
            if DELAY:
                time.sleep(DELAY)
            return original.fn(ctx)
        finally:
            if mark is not None:
                mark.unlink(missing_ok=True)

    return lingering


for _key in SLOW_AGENTS:
    _original = get_agent(_key)
    if _original is not None:
        agent(_key, version=_original.version, description=_original.description)(_wrap(_original))
