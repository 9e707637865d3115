import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from governance.services import policy_publish, stop_engage, stop_release
from operations import engine
from operations.agents import Proposal, agent
from operations.models import (
    Case,
    CaseStatus,
    Escalation,
    OutboxEntry,
    OutboxKind,
    StepRun,
    StepRunStatus,
    WaitReason,
)
from operations.services import case_submit, workflow_install
from tests.helpers import settle, submit

pytestmark = pytest.mark.django_db

admin = Actor.system("test-admin")


def test_straight_through_claim_completes_in_one_task_with_payment_and_letter(claim_generator):
    # given a small auto-glass claim inside every limit
    claim = claim_generator.claim("straight_through")
    case = submit(claim)

    # when one worker task advances it
    assert engine.advance_case(case.pk) == "stop"

    # then all seven steps ran once, in order, and the case completed
    case.refresh_from_db()
    assert case.status == CaseStatus.COMPLETED
    assert case.finished_at is not None and case.current_step is None
    runs = list(StepRun.objects.filter(case=case).order_by("id").values_list("step__key", "status", "attempt"))
    assert runs == [
        (key, StepRunStatus.SUCCEEDED, 1)
        for key in ["intake", "documents", "coverage", "assessment", "approval", "payment", "communication"]
    ]
    # one payment of the approved amount and one approval letter are owed, keyed by case and step
    payment = OutboxEntry.objects.get(case=case, kind=OutboxKind.PAYMENT)
    assert payment.idempotency_key == f"case-{case.pk}-payment-payment"
    assert payment.amount == Decimal(case.context["decisions"]["approval"]["amount"])
    letter = OutboxEntry.objects.get(case=case, kind=OutboxKind.MESSAGE)
    assert letter.payload["letter"] == "approval"
    # both delivered by the same worker task once its transaction committed, without another queue hop
    assert (payment.status, letter.status) == ("delivered", "delivered")
    # and the audit trail holds the submission, seven decisions and the completion
    actions = list(AuditEvent.objects.filter(case_id=case.pk).values_list("action", flat=True))
    assert actions.count(AuditAction.STEP_DECIDED) == 7
    assert actions[0] == AuditAction.CASE_SUBMITTED and AuditAction.CASE_COMPLETED in actions


def test_amount_over_the_agent_limit_escalates_with_every_reason_in_words(claim_generator):
    case = submit(claim_generator.claim("over_limit"))

    engine.advance_case(case.pk)

    case.refresh_from_db()
    assert (case.status, case.wait_reason) == (CaseStatus.WAITING, WaitReason.ESCALATION)
    escalation = Escalation.objects.get(case=case)
    assert escalation.step.key == "approval" and escalation.reason == "amount_over_limit"
    assert escalation.amount > Decimal(5000)
    message = escalation.reasons[0]["message"]
    assert "exceeds the agent limit 5,000.00 (policy v1)" in message
    assert escalation.queue == "Claims handlers"
    assert escalation.sla_deadline > timezone.now()
    # no effect happened before the human decides
    assert not OutboxEntry.objects.filter(case=case).exists()


def test_fraud_referral_goes_to_special_investigations(claim_generator):
    case = submit(claim_generator.claim("fraud_signals"))
    engine.advance_case(case.pk)
    escalation = Escalation.objects.get(case=case)
    assert escalation.reason == "action_not_allowed"
    assert escalation.queue == "Special investigations"
    assert escalation.proposal["action"] == "refer"


_calls = {"crash": 0}


@agent("test.crash")
def crashing_agent(ctx):
    _calls["crash"] += 1
    raise RuntimeError("model server unreachable")


@agent("test.malformed")
def malformed_agent(ctx):
    return {"outcome": "ok", "amount": "lots", "confidence": 3}


@agent("test.wrong_outcome")
def wrong_outcome_agent(ctx):
    return Proposal(outcome="no_such_outcome", action="go")


@agent("test.ok")
def ok_agent(ctx):
    return Proposal(outcome="ok", action="go", amount=Decimal("10.00"), confidence=0.9, data={"seen": True})


def _one_step_workflow(key: str, agent_key: str) -> None:
    workflow_install(
        definition={
            "key": key,
            "name": key,
            "payload_schema": {"type": "object"},
            "steps": [{"key": "only", "name": "Only step", "agent_key": agent_key, "transitions": {"ok": "@complete"}}],
        },
        actor=admin,
    )
    policy_publish(agent_key=agent_key, actor=admin)


def test_a_crashing_agent_ends_in_an_agent_error_escalation_after_the_configured_attempts(settings):
    # given an agent that always raises, and three attempts allowed
    settings.SELFOPS = {**settings.SELFOPS, "STEP_MAX_ATTEMPTS": 3}
    _one_step_workflow("crashy", "test.crash")
    case = case_submit(workflow_key="crashy", reference="C-1", payload={}, actor=admin)
    _calls["crash"] = 0

    # when a worker advances it (retries happen inside the task, with backoff)
    engine.advance_case(case.pk)

    # then the agent ran exactly three times, each failure is recorded, and a human has the case
    assert _calls["crash"] == 3
    runs = StepRun.objects.filter(case=case).order_by("attempt")
    assert [(r.attempt, r.status) for r in runs] == [(i, StepRunStatus.FAILED) for i in (1, 2, 3)]
    assert "RuntimeError: model server unreachable" in runs[0].error
    case.refresh_from_db()
    assert (case.status, case.wait_reason, case.step_attempt) == (CaseStatus.WAITING, WaitReason.ESCALATION, 0)
    escalation = Escalation.objects.get(case=case)
    assert escalation.reason == "agent_error" and escalation.proposal is None
    assert "after 3 attempts" in escalation.reasons[0]["message"]


@pytest.mark.parametrize(
    "agent_key, error",
    [("test.malformed", "invalid proposal"), ("test.wrong_outcome", "not one of this step's outcomes")],
)
def test_malformed_agent_output_is_an_agent_error_not_a_crash(agent_key, error):
    _one_step_workflow("wf-" + agent_key.split(".")[1], agent_key)
    case = case_submit(workflow_key="wf-" + agent_key.split(".")[1], reference="M-1", payload={}, actor=admin)

    engine.advance_case(case.pk)

    run = StepRun.objects.filter(case=case).first()
    assert run.status == StepRunStatus.FAILED and error in run.error
    assert Escalation.objects.get(case=case).reason == "agent_error"


def test_a_worker_that_died_mid_step_leaves_its_attempt_counted(settings):
    # given a case whose worker took the lease (attempt 1 committed) and then died
    settings.SELFOPS = {**settings.SELFOPS, "STEP_MAX_ATTEMPTS": 2}
    _one_step_workflow("dying", "test.ok")
    case = case_submit(workflow_key="dying", reference="D-1", payload={}, actor=admin)
    assert engine._acquire(case.pk, "worker-that-dies")
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # when the task is delivered again
    engine.advance_case(case.pk)

    # then the lost attempt is on record and the step succeeded on attempt 2
    runs = list(StepRun.objects.filter(case=case).order_by("attempt").values_list("attempt", "status"))
    assert runs == [(1, StepRunStatus.LOST), (2, StepRunStatus.SUCCEEDED)]
    case.refresh_from_db()
    assert case.status == CaseStatus.COMPLETED


def test_a_step_whose_workers_keep_dying_escalates_once_attempts_are_spent(settings):
    settings.SELFOPS = {**settings.SELFOPS, "STEP_MAX_ATTEMPTS": 2}
    _one_step_workflow("dying2", "test.ok")
    case = case_submit(workflow_key="dying2", reference="D-2", payload={}, actor=admin)
    for token in ("w1", "w2"):
        assert engine._acquire(case.pk, token)
        Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert engine.advance_case(case.pk) == "skipped"

    assert Escalation.objects.get(case=case).reason == "agent_error"
    assert list(StepRun.objects.filter(case=case).values_list("attempt", "status")) == [(1, "lost"), (2, "lost")]
    case.refresh_from_db()
    assert case.status == CaseStatus.WAITING


def test_a_live_lease_held_by_another_worker_is_respected():
    _one_step_workflow("leased", "test.ok")
    case = case_submit(workflow_key="leased", reference="L-1", payload={}, actor=admin)
    assert engine._acquire(case.pk, "other-worker")

    assert engine.advance_case(case.pk) == "skipped"
    assert not StepRun.objects.filter(case=case).exists()


def test_the_effect_of_a_step_that_runs_twice_is_owed_once(claim_generator):
    # given a completed case
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    # when its payment step is delivered again (at-least-once): put the case back before payment and rerun
    case.refresh_from_db()
    steps = {s.key: s for s in case.workflow.steps.all()}
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.RUNNING, current_step=steps["payment"], finished_at=None)
    engine.advance_case(case.pk)
    # then there is still one payment and one letter
    assert OutboxEntry.objects.filter(case=case, kind=OutboxKind.PAYMENT).count() == 1
    assert OutboxEntry.objects.filter(case=case, kind=OutboxKind.MESSAGE).count() == 1


def test_stop_switch_parks_the_case_before_the_next_step_and_release_resumes_it(
    claim_generator, django_capture_on_commit_callbacks
):
    # given an engaged stop on the payment agent
    stop_engage(scope="agent", target="claims.payment", reason="bank file incident", actor=admin)
    case = submit(claim_generator.claim("straight_through"))

    # when the case is advanced, it stops before payment and waits, parked — not failed
    engine.advance_case(case.pk)
    case.refresh_from_db()
    assert (case.status, case.wait_reason, case.current_step.key) == (CaseStatus.WAITING, WaitReason.STOPPED, "payment")
    assert not OutboxEntry.objects.filter(case=case).exists()

    # when the stop is released, the parked case resumes by itself and completes
    with django_capture_on_commit_callbacks(execute=True):
        stop_release(scope="agent", target="claims.payment", reason="incident closed", actor=admin)
    case.refresh_from_db()
    assert case.status == CaseStatus.RUNNING
    settle(case.pk)
    case.refresh_from_db()
    assert case.status == CaseStatus.COMPLETED
    assert AuditEvent.objects.filter(case_id=case.pk, action=AuditAction.CASE_PARKED).count() == 1
    assert AuditEvent.objects.filter(case_id=case.pk, action=AuditAction.CASE_RESUMED).count() == 1


def test_agent_switched_off_parks_with_reason_agent_off(claim_generator):
    policy_publish(agent_key="claims.intake", actor=admin, autonomy="off")
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    case.refresh_from_db()
    assert (case.status, case.wait_reason) == (CaseStatus.WAITING, WaitReason.AGENT_OFF)
    assert not StepRun.objects.filter(case=case).exists()


def test_a_step_never_switches_policy_version_midway(claim_generator):
    # given a case decided under v1 of the approval policy
    case = submit(claim_generator.claim("over_limit"))
    engine.advance_case(case.pk)
    run = StepRun.objects.get(case=case, step__key="approval")
    assert run.policy_version == 1 and run.verdict["policy_version"] == 1
    # when the limit is raised (v2), a new case uses v2
    policy_publish(
        agent_key="claims.approval",
        actor=admin,
        allowed_actions=["approve", "deny"],
        max_amount=Decimal("50000"),
        min_confidence=Decimal("0.7"),
    )
    other = submit(claim_generator.claim("over_limit"))
    engine.advance_case(other.pk)
    run2 = StepRun.objects.get(case=other, step__key="approval")
    assert run2.policy_version == 2 and run2.status == StepRunStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_advances_of_one_case_apply_each_step_once(claims_workflow):
    from operations.packs.claims.data import ClaimGenerator
    from operations.packs.claims.install import policies_in_db

    if connection.vendor != "postgresql":
        pytest.skip("row-lock concurrency is tested on PostgreSQL")
    claims = ClaimGenerator(policies_in_db(), seed=5).claims(10)
    cases = [submit(c) for c in claims]
    barrier = threading.Barrier(2)
    errors = []

    def worker():
        try:
            barrier.wait()
            for case in cases:
                engine.advance_case(case.pk)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    settle(*[c.pk for c in cases])
    for case in cases:
        keys = list(
            StepRun.objects.filter(case=case, status__in=["succeeded", "escalated"]).values_list("step__key", flat=True)
        )
        assert len(keys) == len(set(keys)), f"{case.reference}: a step was applied twice: {keys}"
        assert OutboxEntry.objects.filter(case=case, kind=OutboxKind.PAYMENT).count() <= 1


class WorkerDied(BaseException):
    """Stands in for SIGKILL: nothing in the engine catches it, the open transaction rolls back."""


_deaths = {"left": 0}


@agent("test.dies_sometimes")
def dies_sometimes(ctx):
    if _deaths["left"] > 0:
        _deaths["left"] -= 1
        raise WorkerDied()
    return Proposal(outcome="ok", action="go")


def _three_step_workflow(key: str) -> None:
    workflow_install(
        definition={
            "key": key,
            "name": key,
            "payload_schema": {"type": "object"},
            "steps": [
                {"key": "a", "name": "A", "agent_key": "test.ok", "transitions": {"ok": "b"}},
                {"key": "b", "name": "B", "agent_key": "test.ok", "transitions": {"ok": "c"}},
                {"key": "c", "name": "C", "agent_key": "test.dies_sometimes", "transitions": {"ok": "@complete"}},
            ],
        },
        actor=admin,
    )
    policy_publish(agent_key="test.ok", actor=admin)
    policy_publish(agent_key="test.dies_sometimes", actor=admin)


def _die_then_expire(case):
    with pytest.raises(WorkerDied):
        engine.advance_case(case.pk)
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_crash_inside_a_batch_of_steps_rolls_the_batch_back_and_is_then_pinned_on_the_right_step(settings):
    # given three steps run in one transaction, the last of which kills its worker once
    settings.SELFOPS = {**settings.SELFOPS, "STEP_MAX_ATTEMPTS": 3}
    _three_step_workflow("batchy")
    case = case_submit(workflow_key="batchy", reference="B-1", payload={}, actor=admin)
    _deaths["left"] = 1

    # when the worker dies in step c, the whole batch rolls back to step a with its attempt counted
    _die_then_expire(case)
    case.refresh_from_db()
    assert (case.current_step.key, case.step_attempt) == ("a", 1)
    assert not StepRun.objects.filter(case=case).exists()
    assert not AuditEvent.objects.filter(case_id=case.pk, action=AuditAction.STEP_DECIDED).exists()

    # then the next delivery records the lost attempt and completes the case step by step
    engine.advance_case(case.pk)
    runs = list(StepRun.objects.filter(case=case).order_by("id").values_list("step__key", "attempt", "status"))
    assert runs == [("a", 1, "lost"), ("a", 2, "succeeded"), ("b", 1, "succeeded"), ("c", 1, "succeeded")]
    case.refresh_from_db()
    assert case.status == CaseStatus.COMPLETED


def test_a_step_that_keeps_killing_its_worker_escalates_at_that_step_after_its_attempts(settings):
    settings.SELFOPS = {**settings.SELFOPS, "STEP_MAX_ATTEMPTS": 2}
    _three_step_workflow("deadly")
    case = case_submit(workflow_key="deadly", reference="X-1", payload={}, actor=admin)
    _deaths["left"] = 10

    _die_then_expire(case)  # in the batch: charged to step a
    _die_then_expire(case)  # careful mode: a and b commit, c dies on its attempt 1
    _die_then_expire(case)  # c dies on its attempt 2
    assert engine.advance_case(case.pk) == "skipped"  # c's attempts are spent

    escalation = Escalation.objects.get(case=case)
    assert (escalation.step.key, escalation.reason) == ("c", "agent_error")
    lost = list(StepRun.objects.filter(case=case, status="lost").values_list("step__key", "attempt"))
    assert lost == [("a", 1), ("c", 1), ("c", 2)]
    _deaths["left"] = 0


@agent("test.slow")
def slow_agent(ctx):
    import time as _time

    _time.sleep(5)
    return Proposal(outcome="ok")


def test_an_agent_that_takes_too_long_is_interrupted_and_counted_as_an_agent_error(settings):
    settings.SELFOPS = {**settings.SELFOPS, "AGENT_TIMEOUT": 0.2, "STEP_MAX_ATTEMPTS": 1}
    _one_step_workflow("sleepy", "test.slow")
    case = case_submit(workflow_key="sleepy", reference="S-1", payload={}, actor=admin)

    engine.advance_case(case.pk)

    run = StepRun.objects.get(case=case)
    assert run.status == StepRunStatus.FAILED and "did not answer within 0.2 s" in run.error
    assert run.duration_ms < 2000
    assert Escalation.objects.get(case=case).reason == "agent_error"


def test_a_case_in_flight_keeps_its_workflow_version_when_a_new_one_is_installed():
    # given a case submitted on v1 and waiting
    _one_step_workflow("versioned", "test.ok")
    old = case_submit(workflow_key="versioned", reference="V-1", payload={}, actor=admin)
    # when v2 is installed (a different definition)
    workflow_install(
        definition={
            "key": "versioned",
            "name": "versioned v2",
            "payload_schema": {"type": "object"},
            "steps": [{"key": "only", "name": "Only", "agent_key": "test.ok", "transitions": {"ok": "@reject"}}],
        },
        actor=admin,
    )
    new = case_submit(workflow_key="versioned", reference="V-2", payload={}, actor=admin)
    engine.advance_case(old.pk)
    engine.advance_case(new.pk)
    # then the old case finished under v1's transitions, the new one under v2's
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.workflow.version, old.status) == (1, CaseStatus.COMPLETED)
    assert (new.workflow.version, new.status) == (2, CaseStatus.REJECTED)


def test_effect_events_name_the_outbox_entry_not_the_case(claim_generator):
    case = submit(claim_generator.claim("straight_through"))
    engine.advance_case(case.pk)
    queued = AuditEvent.objects.filter(case_id=case.pk, action=AuditAction.EFFECT_QUEUED)
    assert sorted(queued.values_list("subject_id", flat=True)) == [
        f"case-{case.pk}-communication-message",
        f"case-{case.pk}-payment-payment",
    ]
    assert set(queued.values_list("subject_type", flat=True)) == {"operations.outboxentry"}
