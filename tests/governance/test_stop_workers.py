"""A stop switch against a real qcluster: engaged mid-run it parks cases, released it resumes them, none lost.

On a loaded machine (the suite runs beside other work on two cores) the cluster can take many seconds to start and
each task runs slowly, so the test waits on conditions, never on sleeps: the stop is engaged once the workers have
really started deciding (so it is mid-run), and the deadlines are generous (they only matter when something hangs;
a passing run ends as soon as its condition holds). The cluster's per-task and per-agent timeouts are raised for the
same reason: under load a slow but healthy task must not be killed and redelivered, nor an agent call be timed out
into a retry or an escalation, which would make the test about timeouts rather than stops."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from governance.services import stop_engage, stop_release
from operations.models import Case, CaseStatus, OutboxEntry, OutboxKind, StepRun, WaitReason
from tests.helpers import submit

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _wait_until(predicate, *, seconds: float, proc, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"qcluster exited with {proc.returncode}: {log.read_text()[-3000:]}")
        if predicate():
            return
        time.sleep(0.2)
    from operations.models import Escalation

    states = list(Case.objects.values_list("pk", "status", "wait_reason", "current_step__key", "lease_owner"))
    escalations = list(Escalation.objects.values_list("case_id", "reason"))
    failures = list(StepRun.objects.exclude(error="").values_list("case_id", "error"))
    raise AssertionError(
        f"timed out waiting for the workers: {states} {escalations} {failures} {log.read_text()[-3000:]}"
    )


def test_stop_engaged_mid_run_parks_and_release_resumes_with_no_case_lost(claim_generator, tmp_path):
    if connection.vendor == "sqlite" and connection.settings_dict["NAME"].startswith(("file:", ":memory:")):
        pytest.skip("the workers need a file-backed test database")
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "selfops.settings_test",
        "SELFOPS_VAR_DIR": str(settings.VAR_DIR),
        "Q_WORKERS": "2",
        "Q_LOG_LEVEL": "WARNING",
        "Q_TIMEOUT": "600",
        "Q_RETRY": "660",
        "SELFOPS_AGENT_TIMEOUT": "300",
    }
    log_path = tmp_path / "qcluster.log"
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log
    )
    admin = Actor.system("test-admin")
    try:
        # given a first batch running on the workers (some step decided already), then a global stop, then a second
        # batch
        first = [submit(claim_generator.claim("straight_through")).pk for _ in range(12)]
        _wait_until(lambda: StepRun.objects.filter(case_id__in=first).exists(), seconds=240, proc=proc, log=log_path)
        stop_engage(scope="global", reason="incident drill", actor=admin)
        second = [submit(claim_generator.claim("straight_through")).pk for _ in range(6)]
        ids = first + second

        # when the workers have run what they can, nothing runs any more: cases are parked or done, none failed
        def settled():
            return not Case.objects.filter(pk__in=ids, status=CaseStatus.RUNNING).exists()

        _wait_until(settled, seconds=240, proc=proc, log=log_path)
        parked = set(
            Case.objects.filter(pk__in=ids, status=CaseStatus.WAITING, wait_reason=WaitReason.STOPPED).values_list(
                "pk", flat=True
            )
        )
        assert set(second) <= parked  # nothing new started under the stop
        states = set(Case.objects.filter(pk__in=ids).exclude(pk__in=parked).values_list("status", flat=True))
        assert states <= {CaseStatus.COMPLETED}
        assert not OutboxEntry.objects.filter(case_id__in=parked, kind=OutboxKind.MESSAGE).exists()

        # when the stop is released, the parked cases resume by themselves and complete
        stop_release(scope="global", reason="drill over", actor=admin)

        def all_done():
            return Case.objects.filter(pk__in=ids, status=CaseStatus.COMPLETED).count() == len(ids)

        _wait_until(all_done, seconds=240, proc=proc, log=log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # the work is done or failed already: no need for a graceful drain
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()

    # then no case was lost or done twice: seven decisions, one payment and one letter each
    for case_id in ids:
        decided = AuditEvent.objects.filter(case_id=case_id, action=AuditAction.STEP_DECIDED).count()
        assert decided == 7, (case_id, decided)
        assert OutboxEntry.objects.filter(case_id=case_id).count() == 2
    assert AuditEvent.objects.filter(action=AuditAction.CASE_PARKED).count() == len(parked)
    assert AuditEvent.objects.filter(action=AuditAction.CASE_RESUMED).count() == len(parked)
