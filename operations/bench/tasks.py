"""Reference tasks for the benchmark: a no-op, and the naive one-task-per-step engine a typical team would write."""

from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from audit.actors import SYSTEM
from governance.evaluation import evaluate
from governance.selectors import policy_for_agent
from operations.agents import get_agent
from operations.engine import StepTx, _agent_context, apply_decision, case_view, open_escalation
from operations.models import Case, CaseStatus, StepRun, StepRunStatus


def noop() -> None:
    return None


def naive_step(case_id: int) -> None:
    """One step of one case per task: lock, run the agent, ask governance, record, apply, enqueue the next step.
    The same building blocks as the engine, without its batching of consecutive steps into one task."""
    with transaction.atomic():
        case = Case.objects.select_for_update(of=("self",)).select_related("workflow", "current_step").get(pk=case_id)
        if case.status != CaseStatus.RUNNING:
            return
        step = case.current_step
        case.step_attempt = 1
        policy = policy_for_agent(step.agent_key, workflow_key=case.workflow.key, step_key=step.key)
        registered = get_agent(step.agent_key)
        started = timezone.now()
        proposal = registered.fn(_agent_context(case, step, policy))
        verdict = evaluate(policy, proposal, case_view(case))
        run = StepRun.objects.create(
            case=case,
            step=step,
            attempt=1,
            agent_key=step.agent_key,
            agent_version=registered.version,
            status=StepRunStatus.SUCCEEDED if verdict.allowed else StepRunStatus.ESCALATED,
            proposal=proposal.as_dict(),
            verdict=verdict.as_dict(),
            policy_version=verdict.policy_version,
            started_at=started,
            finished_at=timezone.now(),
        )
        tx = StepTx(case)
        tx.audit(actor=SYSTEM, action="step.decided", subject=run, data={"step": step.key})
        if verdict.allowed:
            apply_decision(tx, step, proposal, actor=SYSTEM)
        else:
            open_escalation(tx, step, run, proposal, verdict)
        case.save()
        tx.flush()
        if case.status == CaseStatus.RUNNING:
            async_task("operations.bench.tasks.naive_step", case.pk)
