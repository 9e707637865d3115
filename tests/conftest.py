import pytest
from django.db import connection, connections

from audit import triggers
from audit.actors import Actor


@pytest.fixture(scope="session", autouse=True)
def _audit_triggers_survive_flush():
    """Transactional tests end with a flush (TRUNCATE / DELETE of every table), which the audit table's append-only
    triggers rightly refuse. Lift them for the flush only, and put them back at once."""
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def teardown(self):
        aliases = [a for a in self._databases_names(include_mirrors=False)]
        for alias in aliases:
            triggers.remove(connections[alias])
        try:
            original(self)
        finally:
            for alias in aliases:
                triggers.install(connections[alias])

    TransactionTestCase._fixture_teardown = teardown
    yield
    TransactionTestCase._fixture_teardown = original


@pytest.fixture
def system_actor():
    return Actor.system("test")


@pytest.fixture
def claims_workflow(db):
    """The claims demo pack with a small set of policies."""
    from operations.packs.claims.install import install

    return install(actor=Actor.system("test"), policies=400)


@pytest.fixture
def claim_generator(claims_workflow):
    from operations.packs.claims.data import ClaimGenerator
    from operations.packs.claims.install import policies_in_db

    return ClaimGenerator(policies_in_db(), seed=42)


def postgres_only():
    return pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row locks, concurrency)")


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Process caches key on ids; a rolled-back test can hand the same id to different rows."""
    from governance.selectors import clear_caches as clear_governance
    from operations.selectors import clear_caches as clear_operations

    clear_operations()
    clear_governance()
    yield
