"""Who may do what in the portal. Roles are Django groups; so is every escalation queue.

- ``Supervisor``: works the escalations of the queues (groups) they belong to; approves up to the supervisor limit.
- ``Senior supervisor``: the same, with a higher approval limit; bulk-reassigns; receives SLA escalations (the group
  is also a queue).
- ``Governance admin``: reads everything in the portal (and sets policies in governance).
- ``Auditor``: reads everything, acts on nothing.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings

SUPERVISOR = "Supervisor"
SENIOR_SUPERVISOR = "Senior supervisor"
GOVERNANCE_ADMIN = "Governance admin"
AUDITOR = "Auditor"
ROLES = (SUPERVISOR, SENIOR_SUPERVISOR, GOVERNANCE_ADMIN, AUDITOR)
READ_ALL_ROLES = (GOVERNANCE_ADMIN, AUDITOR)
ACTING_ROLES = (SUPERVISOR, SENIOR_SUPERVISOR)
# where escalations go when their SLA is breached long enough (a queue is a group)
SENIOR_QUEUE = SENIOR_SUPERVISOR


def group_names(user) -> frozenset[str]:
    """The user's group names, read once per request object."""
    cached = getattr(user, "_selfops_groups", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True)) if user.is_authenticated else frozenset()
        user._selfops_groups = cached
    return cached


def reads_all(user) -> bool:
    return user.is_superuser or bool(group_names(user) & set(READ_ALL_ROLES))


def is_senior(user) -> bool:
    return user.is_superuser or SENIOR_SUPERVISOR in group_names(user)


def can_act(user) -> bool:
    """May resolve, claim and release escalations (of queues they can see)."""
    return user.is_active and (user.is_superuser or bool(group_names(user) & set(ACTING_ROLES)))


def has_portal_role(user) -> bool:
    return user.is_superuser or bool(group_names(user) & set(ROLES))


def queue_names(user) -> frozenset[str]:
    """The queues (groups) a user works, i.e. their groups that are not roles."""
    return frozenset(g for g in group_names(user) if g not in ROLES) | (
        {SENIOR_QUEUE} if SENIOR_SUPERVISOR in group_names(user) else frozenset()
    )


def _setting(name: str) -> Decimal:
    return Decimal(str(settings.SELFOPS[name]))


def approval_limit(user) -> Decimal:
    """The amount a user may approve alone (CLAIMS_DOMAIN.md authority tiers)."""
    if is_senior(user):
        return _setting("SENIOR_APPROVAL_LIMIT")
    if SUPERVISOR in group_names(user):
        return _setting("SUPERVISOR_APPROVAL_LIMIT")
    return Decimal(0)


def four_eyes_amount() -> Decimal:
    return _setting("FOUR_EYES_AMOUNT")


def senior_limit() -> Decimal:
    return _setting("SENIOR_APPROVAL_LIMIT")
