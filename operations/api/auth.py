"""Who is calling: an API client (``Authorization: Bearer <key>``) or a portal user (session), with what scopes.

Both become a ``Principal``, and every read of protected data goes through its selectors, so that an API view
cannot forget the object-level rules (OWASP API1:2023): a client sees the cases it submitted and the escalations of
its queues; a portal user sees what the portal shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions

from audit.actors import Actor
from operations.api.clients import api_client_for_key
from operations.models import ApiClient, ApiScope
from operations.selectors import cases_visible_to, escalations_visible_to


class ClientUser:
    """What ``request.user`` is for a request made with an API key (``request.auth`` is the ``ApiClient``)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, client: ApiClient):
        self.client = client
        self.pk = None

    def __str__(self) -> str:
        return f"api client {self.client.name}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer sok_…``. A missing header leaves the request to the next authenticator (session);
    a bad, rotated or revoked key is a 401."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0].lower() != self.keyword.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("the Authorization header must read 'Bearer <key>'")
        client = api_client_for_key(header[1])
        if client is None:
            raise exceptions.AuthenticationFailed("this API key is not valid (unknown, rotated or revoked)")
        return ClientUser(client), client

    def authenticate_header(self, request):
        return 'Bearer realm="selfops"'


# Scopes a portal user holds through the session, by the Django permission that grants each.
USER_SCOPE_PERMISSIONS = {
    ApiScope.CASES_WRITE: "operations.add_case",
    ApiScope.GOVERNANCE_STOP: "governance.change_stopswitch",
    ApiScope.AUDIT_READ: "audit.view_auditevent",
    ApiScope.WEBHOOKS_MANAGE: None,  # subscriptions belong to API clients
}


@dataclass
class Principal:
    client: ApiClient | None
    user: object | None
    scopes: frozenset[str]

    @property
    def actor(self) -> Actor:
        return Actor.api_client(self.client) if self.client is not None else Actor.user(self.user)

    def cases(self):
        return cases_visible_to(user=self.user, client=self.client)

    def escalations(self):
        return escalations_visible_to(user=self.user, client=self.client)


def api_client_of(request) -> ApiClient | None:
    """The API client a request was made with (its key), or None for a session or an anonymous request."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiClient) else None


def principal(request) -> Principal:
    """The caller of an authenticated request (cached on the request)."""
    cached = getattr(request, "_selfops_principal", None)
    if cached is not None:
        return cached
    if (client := api_client_of(request)) is not None:
        result = Principal(client=client, user=None, scopes=frozenset(client.scopes or []))
    else:
        user = request.user
        scopes = set()
        for scope in ApiScope.values:
            perm = USER_SCOPE_PERMISSIONS.get(scope, "")
            if perm == "" or (perm is not None and user.has_perm(perm)):
                scopes.add(scope)
        result = Principal(client=None, user=user, scopes=frozenset(scopes))
    request._selfops_principal = result
    return result
