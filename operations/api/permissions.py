"""Scope checks: a view names the scope each method needs (``required_scopes``); a caller without it gets 403."""

from rest_framework.permissions import BasePermission

from operations.api.auth import principal


class HasScope(BasePermission):
    message = "this credential lacks the scope this endpoint needs"

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        needed = getattr(view, "required_scopes", {})
        scope = needed.get(request.method, needed.get("*")) if isinstance(needed, dict) else needed
        if scope is None:
            return True
        if scope not in principal(request).scopes:
            self.message = f"this credential lacks the scope '{scope}'"
            return False
        return True
