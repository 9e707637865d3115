"""Template context for every portal page: the engaged stop switches, shown as a banner."""

from governance.selectors import stops_engaged


def stops(request):
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"engaged_stops": stops_engaged()}
