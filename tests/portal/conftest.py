import pytest

from tests.portal.helpers import HANDLERS, SIU, make_user


@pytest.fixture
def people(db):
    """handler (Supervisor, claims), ann (Supervisor, claims), siu (Supervisor, SIU only), senior (both queues),
    senior2, auditor (read only)."""
    return {
        "handler": make_user("handler", "Supervisor", HANDLERS),
        "ann": make_user("ann", "Supervisor", HANDLERS),
        "siu": make_user("siu", "Supervisor", SIU),
        "senior": make_user("senior", "Senior supervisor", HANDLERS, SIU),
        "senior2": make_user("senior2", "Senior supervisor", HANDLERS, SIU),
        "auditor": make_user("auditor", "Auditor"),
    }


@pytest.fixture(autouse=True)
def _fresh_dashboard_cache():
    """The dashboard caches organisation figures for a few seconds; each test starts without them."""
    from django.core.cache import cache

    cache.delete("portal:dashboard")
