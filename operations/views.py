"""Portal pages (server-rendered, htmx partials). Thin: parse input, call one service or selector, render. Every
id-taking page looks its object up through a selector, so another queue's escalation is a 404."""

from __future__ import annotations

import csv
from functools import wraps

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from audit.actors import Actor
from operations import metrics, roles
from operations.errors import DomainError
from operations.filtersets import CaseFilterSet, EscalationFilterSet
from operations.forms import ReassignForm, ResolveForm
from operations.models import CaseStatus, Escalation, EscalationStatus
from operations.resolution_codes import REASON_CODES
from operations.selectors import (
    case_detail_parts,
    case_timeline,
    cases_for,
    escalations_for,
    similar_escalations,
    sla_state,
)
from operations.services import (
    escalation_claim,
    escalation_claim_next,
    escalation_release,
    escalation_resolve,
    escalations_reassign,
)

PAGE_SIZE = 50
COUNT_LIMIT = 10_000  # lists count exactly up to here, then show "10,000+"
EXPORT_LIMIT = 100_000


def acting_required(view):
    """POSTs that change escalations: auditors and governance admins read only (403)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not roles.can_act(request.user):
            raise PermissionDenied("your role may read but not act")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def _page(request, qs, size: int | None = None):
    """Offset pages with a bounded count: exact up to COUNT_LIMIT rows, then "10,000+" (an exact count over 100k
    open escalations or a million cases costs more than the page; counting the first 10,001 rows of the same index
    range does not)."""
    size = size or PAGE_SIZE
    try:
        number = max(1, int(request.GET.get("page", 1)))
    except ValueError:
        number = 1
    rows = list(qs[(number - 1) * size : number * size + 1])
    total = _bounded_count(qs)
    exact = total <= COUNT_LIMIT
    query = request.GET.copy()
    query.pop("page", None)
    return {
        "rows": rows[:size],
        "number": number,
        "has_next": len(rows) > size,
        "has_previous": number > 1,
        "query": query.urlencode(),
        "count": min(total, COUNT_LIMIT),
        "count_exact": exact,
        "pages": -(-total // size) if exact else None,
        "first": (number - 1) * size + 1 if rows else 0,
        "last": (number - 1) * size + len(rows[:size]),
    }


def _annotate_sla(escalations, now=None):
    now = now or timezone.now()
    for e in escalations:
        e.sla_state = sla_state(e, now)
        e.seconds_left = int((e.sla_deadline - now).total_seconds()) if e.sla_deadline else None
    return escalations


def _queue_choices(user) -> list[str]:
    if roles.reads_all(user):
        role_groups = [r for r in roles.ROLES if r != roles.SENIOR_QUEUE]
        return list(Group.objects.exclude(name__in=role_groups).order_by("name").values_list("name", flat=True))
    return sorted(roles.queue_names(user))


def _reasons() -> list[str]:
    reasons = cache.get("portal:escalation-reasons")
    if reasons is None:
        reasons = sorted(r for r in Escalation.objects.values_list("reason", flat=True).distinct().order_by() if r)
        cache.set("portal:escalation-reasons", reasons, 300)
    return reasons


def _bounded_count(qs) -> int:
    """An exact count up to COUNT_LIMIT, COUNT_LIMIT + 1 beyond (shown as "10,000+")."""
    return qs.order_by()[: COUNT_LIMIT + 1].count()


@login_required
def home(request):
    # one bounded count per status: each reads at most 10,001 entries of the (status, updated_at) index, where a
    # GROUP BY over a million cases would read them all
    cases = cases_for(request.user).select_related(None)
    by_status = [(s, label, _bounded_count(cases.filter(status=s))) for s, label in CaseStatus.choices]
    open_escalations = escalations_for(request.user).filter(status=EscalationStatus.OPEN)
    open_count = _bounded_count(open_escalations)
    return render(
        request,
        "operations/home.html",
        {
            "by_status": [(s, label, min(n, COUNT_LIMIT), n > COUNT_LIMIT) for s, label, n in by_status],
            "total": min(sum(n for _, _, n in by_status), COUNT_LIMIT * len(by_status)),
            "total_bounded": any(n > COUNT_LIMIT for _, _, n in by_status),
            "open_escalations": min(open_count, COUNT_LIMIT),
            "open_escalations_bounded": open_count > COUNT_LIMIT,
            "escalations": _annotate_sla(list(open_escalations.order_by("sla_deadline", "id")[:10])),
            "recent": cases_for(request.user).order_by("-id")[:15],
        },
    )


# --- escalations ---------------------------------------------------------------------------------------------------


@login_required
def escalation_list(request):
    filterset = EscalationFilterSet(request.GET, queryset=escalations_for(request.user), request=request)
    qs = filterset.qs.order_by("sla_deadline", "id") if filterset.is_valid() else escalations_for(request.user).none()
    page = _page(request, qs)
    _annotate_sla(page["rows"])
    context = {
        "filter": filterset,
        "page": page,
        "escalations": page["rows"],
        "queues": _queue_choices(request.user),
        "reasons": _reasons(),
        "can_act": roles.can_act(request.user),
        "is_senior": roles.is_senior(request.user),
        "assignees": get_user_model()
        .objects.filter(groups__name__in=roles.ACTING_ROLES)
        .distinct()
        .order_by("username")
        if roles.is_senior(request.user)
        else [],
    }
    if request.htmx and not request.htmx.boosted:
        return render(request, "operations/_escalation_queue.html", context)
    return render(request, "operations/escalation_list.html", context)


@login_required
def escalation_export(request):
    """The filtered queue as CSV, scoped like the list."""
    filterset = EscalationFilterSet(request.GET, queryset=escalations_for(request.user), request=request)
    if not filterset.is_valid():
        return HttpResponse("bad filter", status=400)
    rows = filterset.qs.order_by("sla_deadline", "id").values_list(
        "pk", "case__reference", "step__key", "reason", "amount", "queue", "priority", "status", "sla_deadline",
        "claimed_by__username", "resolution", "reason_code", "resolved_by", "resolved_at",
    )[:EXPORT_LIMIT]  # fmt: skip

    class Echo:
        def write(self, value):
            return value

    writer = csv.writer(Echo())
    header = ["id", "case", "step", "reason", "amount", "queue", "priority", "status", "sla_deadline", "claimed_by"]
    header += ["resolution", "reason_code", "resolved_by", "resolved_at"]

    def lines():
        yield writer.writerow(header)
        for row in rows.iterator(chunk_size=2000):
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="escalations.csv"'
    return response


def _detail_context(request, escalation, form=None):
    _annotate_sla([escalation])
    pending = escalation.pending_approval or {}
    return {
        "escalation": escalation,
        "form": form or ResolveForm(initial=_initial(escalation), escalation=escalation),
        "reassign_form": ReassignForm(user=request.user),
        "reason_codes": REASON_CODES,
        "timeline": case_timeline(case=escalation.case, visible_escalations=escalations_for(request.user)),
        "similar": similar_escalations(user=request.user, escalation=escalation),
        "documents": (escalation.case.payload or {}).get("documents") or [],
        "outcomes": list(escalation.step.transitions),
        "pending": pending,
        "pending_is_mine": bool(pending)
        and (pending.get("by_kind", "user"), pending.get("by_id")) == ("user", str(request.user.pk)),
        "can_act": roles.can_act(request.user),
        "claimed_by_me": escalation.claimed_by_id == request.user.pk,
        "four_eyes_amount": roles.four_eyes_amount(),
        "my_limit": roles.approval_limit(request.user),
    }


def _initial(escalation) -> dict:
    proposal = escalation.proposal or {}
    return {"amount": proposal.get("amount"), "outcome": proposal.get("outcome", "")}


@login_required
def escalation_detail(request, pk: int):
    escalation = get_object_or_404(escalations_for(request.user), pk=pk)
    return render(request, "operations/escalation_detail.html", _detail_context(request, escalation))


@require_POST
@acting_required
def escalation_resolve_view(request, pk: int):
    escalation = get_object_or_404(escalations_for(request.user), pk=pk)
    form = ResolveForm(request.POST, escalation=escalation)
    if not form.is_valid():
        return render(
            request, "operations/escalation_detail.html", _detail_context(request, escalation, form), status=400
        )
    try:
        result = escalation_resolve(escalation_id=escalation.pk, actor=Actor.user(request.user), **form.cleaned_data)
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect("portal:escalation", pk=pk)
    if result.status == EscalationStatus.OPEN:
        messages.success(request, f"Your approval of escalation {pk} is recorded; a second person must approve it.")
    else:
        messages.success(request, f"Escalation {pk} resolved: {result.get_resolution_display().lower()}.")
    return redirect("portal:escalations")


@require_POST
@acting_required
def escalation_claim_view(request, pk: int):
    escalation = get_object_or_404(escalations_for(request.user), pk=pk)
    try:
        escalation_claim(escalation_id=escalation.pk, actor=Actor.user(request.user))
        messages.success(request, f"You hold escalation {pk}.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("portal:escalation", pk=pk)


@require_POST
@acting_required
def escalation_release_view(request, pk: int):
    escalation = get_object_or_404(escalations_for(request.user), pk=pk)
    try:
        escalation_release(escalation_id=escalation.pk, actor=Actor.user(request.user))
        messages.success(request, f"Escalation {pk} is back in its queue.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("portal:escalation", pk=pk)


@require_POST
@acting_required
def escalation_claim_next_view(request):
    try:
        escalation = escalation_claim_next(actor=Actor.user(request.user))
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect("portal:escalations")
    if escalation is None:
        messages.info(request, "Nothing left to claim in your queues.")
        return redirect("portal:escalations")
    return redirect("portal:escalation", pk=escalation.pk)


@require_POST
@acting_required
def escalation_reassign_view(request):
    """Reassign one escalation (from its page) or several (senior supervisors, from the queue)."""
    ids = request.POST.getlist("ids")
    form = ReassignForm(request.POST, user=request.user)
    back = request.POST.get("next") or reverse("portal:escalations")
    if not back.startswith("/"):
        back = reverse("portal:escalations")
    wanted = {int(i) for i in ids if i.isdigit()}
    visible = set(escalations_for(request.user).filter(pk__in=wanted).values_list("pk", flat=True))
    if not wanted or visible != wanted:
        raise Http404("no such escalation in your queues")
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect(back)
    try:
        moved = escalations_reassign(
            escalation_ids=sorted(visible),
            actor=Actor.user(request.user),
            note=form.cleaned_data["note"],
            queue=form.cleaned_data["queue"],
            assignee=form.cleaned_data["assignee"],
        )
        messages.success(request, f"{len(moved)} escalation(s) reassigned.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect(back)


# --- cases ---------------------------------------------------------------------------------------------------------


@login_required
def case_list(request):
    filterset = CaseFilterSet(request.GET, queryset=cases_for(request.user))
    qs = filterset.qs.order_by("-id") if filterset.is_valid() else cases_for(request.user).none()
    page = _page(request, qs)
    context = {"filter": filterset, "page": page, "cases": page["rows"], "statuses": CaseStatus.choices}
    if request.htmx and not request.htmx.boosted:
        return render(request, "operations/_case_results.html", context)
    return render(request, "operations/case_list.html", context)


@login_required
def case_detail(request, pk: int):
    case = get_object_or_404(cases_for(request.user), pk=pk)
    parts = case_detail_parts(user=request.user, case=case)
    _annotate_sla(parts["escalations"])
    return render(request, "operations/case_detail.html", {"case": case, **parts})


# --- dashboard -----------------------------------------------------------------------------------------------------


@login_required
def dashboard(request):
    if not roles.has_portal_role(request.user):
        raise PermissionDenied("the dashboard is for portal roles")
    data = metrics.dashboard(user=request.user)
    charts = {
        "series": data["series"],
        "reasons": {
            "labels": [r["reason"] for r in data["by_reason"]["rows"]],
            "counts": [r["n"] for r in data["by_reason"]["rows"]],
        },
        "queues": {
            "labels": [q["queue"] for q in data["queues"]],
            "open": [q["open"] for q in data["queues"]],
            "unclaimed": [q["unclaimed"] for q in data["queues"]],
        },
    }
    context = {**data, "charts": charts}
    if request.htmx and not request.htmx.boosted:
        return render(request, "operations/_dashboard.html", context)
    return render(request, "operations/dashboard.html", context)


# --- agents: versions with replay results beside the live one, rollout in one click, cost and latency ---------------


def _may_roll_out(user) -> bool:
    return (
        user.is_superuser
        or user.has_perm("operations.change_agentversion")
        or roles.GOVERNANCE_ADMIN in roles.group_names(user)  # rollouts are governance decisions
    )


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
