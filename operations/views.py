"""Portal pages (server-rendered). Thin: parse input, call one service or selector, render."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from audit.actors import Actor
from operations.errors import DomainError
from operations.forms import ResolveForm
from operations.models import Case, CaseStatus, EscalationStatus, OutboxEntry
from operations.selectors import case_timeline, escalations_for
from operations.services import escalation_resolve


@login_required
def home(request):
    by_status = dict(Case.objects.values_list("status").annotate(n=Count("id")).order_by())
    open_escalations = escalations_for(request.user).filter(status=EscalationStatus.OPEN)
    return render(
        request,
        "operations/home.html",
        {
            "by_status": [(s, label, by_status.get(s, 0)) for s, label in CaseStatus.choices],
            "total": sum(by_status.values()),
            "open_escalations": open_escalations.count(),
            "escalations": open_escalations.order_by("sla_deadline", "id")[:10],
            "recent": Case.objects.select_related("workflow", "current_step").order_by("-id")[:15],
        },
    )


@login_required
def escalation_list(request):
    qs = escalations_for(request.user).filter(status=request.GET.get("status", EscalationStatus.OPEN))
    return render(request, "operations/escalation_list.html", {"escalations": qs.order_by("sla_deadline", "id")[:200]})


@login_required
def escalation_detail(request, pk: int):
    escalation = get_object_or_404(escalations_for(request.user), pk=pk)
    return render(
        request,
        "operations/escalation_detail.html",
        {
            "escalation": escalation,
            "form": ResolveForm(),
            "timeline": case_timeline(case=escalation.case),
        },
    )


@login_required
@require_POST
def escalation_resolve_view(request, pk: int):
    escalation = get_object_or_404(escalations_for(request.user), pk=pk)
    form = ResolveForm(request.POST)
    if not form.is_valid():
        return render(
            request,
            "operations/escalation_detail.html",
            {
                "escalation": escalation,
                "form": form,
                "timeline": case_timeline(case=escalation.case),
            },
            status=400,
        )
    try:
        escalation_resolve(escalation_id=escalation.pk, actor=Actor.user(request.user), **form.cleaned_data)
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect("portal:escalation", pk=pk)
    messages.success(request, f"Escalation {pk} resolved: {form.cleaned_data['resolution']}.")
    return redirect("portal:escalations")


@login_required
def case_list(request):
    qs = Case.objects.select_related("workflow", "current_step").order_by("-id")
    if status := request.GET.get("status"):
        qs = qs.filter(status=status)
    if q := request.GET.get("q"):
        qs = qs.filter(reference__icontains=q)
    return render(request, "operations/case_list.html", {"cases": qs[:200], "statuses": CaseStatus.choices})


@login_required
def case_detail(request, pk: int):
    case = get_object_or_404(Case.objects.select_related("workflow", "current_step"), pk=pk)
    return render(
        request,
        "operations/case_detail.html",
        {
            "case": case,
            "runs": case.step_runs.select_related("step").order_by("id"),
            "escalations": escalations_for(request.user).filter(case=case),
            "outbox": OutboxEntry.objects.filter(case=case).order_by("id"),
            "timeline": case_timeline(case=case),
        },
    )


# --- agents: versions with replay results beside the live one, rollout in one click, cost and latency ---------------


def _may_roll_out(user) -> bool:
    return user.is_superuser or user.has_perm("operations.change_agentversion")


@login_required
def agents(request):
    from operations.agents.versions import agent_versions_overview
    from operations.selectors import agent_stats

    return render(
        request,
        "operations/agents.html",
        {"overview": agent_versions_overview(), "stats": agent_stats(), "may_roll_out": _may_roll_out(request.user)},
    )


@login_required
@require_POST
def agent_version_action(request, agent_key: str, version: str, action: str):
    from django.core.exceptions import PermissionDenied

    from operations.agents import versions as agent_versions

    if not _may_roll_out(request.user):
        raise PermissionDenied("only a governance admin changes agent rollouts")
    actor = Actor.user(request.user)
    calls = {
        "replay": lambda: agent_versions.agent_replay(
            agent_key=agent_key, version=version, last=int(request.POST.get("last") or 50), actor=actor
        ),
        "canary": lambda: agent_versions.agent_version_start_canary(
            agent_key=agent_key, version=version, share=request.POST.get("share") or "0.1", actor=actor
        ),
        "promote": lambda: agent_versions.agent_version_promote(agent_key=agent_key, version=version, actor=actor),
        "rollback": lambda: agent_versions.agent_version_rollback(agent_key=agent_key, version=version, actor=actor),
    }
    if action not in calls:
        messages.error(request, f"unknown action {action}")
        return redirect("portal:agents")
    try:
        calls[action]()
    except (DomainError, ValueError, ArithmeticError) as exc:
        messages.error(request, getattr(exc, "message", str(exc)))
    else:
        messages.success(request, f"{agent_key} {version}: {action} done.")
    return redirect("portal:agents")
