"""Portal governance pages. Anyone signed in reads; changes need the governance admin group (or a superuser)."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from audit.actors import Actor
from governance.backtest import backtest
from governance.errors import GovernanceError
from governance.forms import BacktestForm, QADecideForm, StopForm
from governance.models import AgentPolicy, QAReview, QAStatus, StopSwitch
from governance.selectors import general_policy, governance_admin, governance_overview
from governance.services import policy_promote, policy_terms, qa_review_decide, stop_engage, stop_release


def _require_admin(request):
    if not governance_admin(request.user):
        raise PermissionDenied("only governance admins change governance")


@login_required
def home(request):
    return render(
        request,
        "governance/home.html",
        {
            "rows": governance_overview(),
            "stops": StopSwitch.objects.order_by("scope", "target"),
            "qa_reviews": QAReview.objects.filter(status=QAStatus.OPEN).order_by("id")[:50],
            "can_change": governance_admin(request.user),
            "stop_form": StopForm(),
            "qa_form": QADecideForm(),
        },
    )


@login_required
@require_POST
def stop_flip(request):
    _require_admin(request)
    form = StopForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect("governance:home")
    service = stop_engage if form.cleaned_data["engage"] else stop_release
    try:
        switch = service(
            scope=form.cleaned_data["scope"],
            target=form.cleaned_data["target"],
            reason=form.cleaned_data["reason"],
            actor=Actor.user(request.user),
        )
    except GovernanceError as exc:
        messages.error(request, exc.message)
        return redirect("governance:home")
    messages.success(
        request, f"Stop {switch.scope}:{switch.target or '*'} {'engaged' if switch.engaged else 'released'}."
    )
    return redirect("governance:home")


@login_required
@require_POST
def promote(request, agent_key: str):
    _require_admin(request)
    try:
        version = policy_promote(agent_key=agent_key, actor=Actor.user(request.user), note=request.POST.get("note", ""))
    except GovernanceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{agent_key} promoted to {version.autonomy} (policy v{version.number}).")
    return redirect("governance:home")


@login_required
@require_POST
def qa_decide(request, pk: int):
    _require_admin(request)
    form = QADecideForm(request.POST)
    if not form.is_valid():
        messages.error(request, "a verdict and a note are required")
        return redirect("governance:home")
    try:
        qa_review_decide(review_id=pk, actor=Actor.user(request.user), **form.cleaned_data)
    except GovernanceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"QA review {pk} recorded.")
    return redirect("governance:home")


@login_required
def backtest_view(request):
    _require_admin(request)
    agents = list(AgentPolicy.objects.order_by("agent_key").values_list("agent_key", flat=True).distinct())
    report = None
    if "agent_key" in request.GET:
        form = BacktestForm(request.GET, agents=agents)
        if form.is_valid():
            data = form.cleaned_data
            report = backtest(form.terms(), data["agent_key"], data["since"], data["until"])
    else:
        agent_key = request.GET.get("agent") or (agents[0] if agents else "")
        policy = general_policy(agent_key).select_related("current_version").first()
        initial = policy_terms(policy.current_version) if policy and policy.current_version else {}
        now = timezone.now().replace(second=0, microsecond=0)
        form = BacktestForm(
            initial={**initial, "agent_key": agent_key, "since": now - timedelta(days=7), "until": now}, agents=agents
        )
    return render(request, "governance/backtest.html", {"form": form, "report": report})
