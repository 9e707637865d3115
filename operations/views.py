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
