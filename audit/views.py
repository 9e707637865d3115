"""Auditor pages: the chain's status, the event browser, and the per-case dossier (JSON and printable HTML)."""

import json
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.shortcuts import render

from audit.dossier import CaseNotFound, case_dossier
from audit.selectors import audit_events_page, is_auditor
from audit.verification import verify_status


def auditor_required(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not is_auditor(request.user):
            raise PermissionDenied("auditors only")
        return view(request, *args, **kwargs)

    return wrapper


@auditor_required
def status(request):
    return render(request, "audit/status.html", {"status": verify_status()})


@auditor_required
def event_list(request):
    params = request.GET.copy()
    before = params.pop("before", [None])[-1]
    try:
        before = int(before) if before else None
    except ValueError:
        before = None
    page = audit_events_page(params=params, before=before)
    return render(request, "audit/event_list.html", {"page": page, "query": params.urlencode()})


def _dossier(case_id: int) -> dict:
    try:
        return case_dossier(case_id)
    except CaseNotFound as exc:
        raise Http404(str(exc)) from exc


@auditor_required
def dossier_json(request, case_id: int):
    response = JsonResponse(_dossier(case_id), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'inline; filename="case-{case_id}-dossier.json"'
    return response


@auditor_required
def dossier_html(request, case_id: int):
    dossier = _dossier(case_id)
    events = [(e, json.dumps(e["data"], indent=2, sort_keys=True, ensure_ascii=False)) for e in dossier["events"]]
    return render(request, "audit/dossier.html", {"dossier": dossier, "events": events})
