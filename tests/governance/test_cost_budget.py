"""Per-agent daily cost budgets: set through an audited service, counted per UTC day, exhausted at the limit."""

from datetime import date
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from audit.actors import Actor
from audit.models import AuditAction, AuditEvent
from governance.errors import GovernanceError
from governance.models import AgentCostBudget
from governance.selectors import cost_budget_exhausted
from governance.services import cost_budget_consume, cost_budget_set

ADMIN = Actor.system("test-admin")
DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)


@pytest.mark.django_db
def test_spending_is_counted_per_day_and_exhausts_at_the_limit():
    cost_budget_set(agent_key="a", daily_limit=Decimal("1.00"), actor=ADMIN)
    assert cost_budget_exhausted("a", today=DAY1) is None
    cost_budget_consume(agent_key="a", cost=Decimal("0.60"), today=DAY1)
    assert cost_budget_exhausted("a", today=DAY1) is None
    cost_budget_consume(agent_key="a", cost=Decimal("0.40"), today=DAY1)
    assert cost_budget_exhausted("a", today=DAY1)["spent"] == Decimal("1.00")
    # a new UTC day starts from zero again
    assert cost_budget_exhausted("a", today=DAY2) is None
    cost_budget_consume(agent_key="a", cost=Decimal("0.25"), today=DAY2)
    budget = AgentCostBudget.objects.get(agent_key="a")
    assert (budget.day, budget.spent) == (DAY2, Decimal("0.25"))


@pytest.mark.django_db
def test_agents_without_a_budget_are_never_exhausted_and_a_zero_budget_always_is():
    cost_budget_consume(agent_key="free", cost=Decimal("5"), today=DAY1)
    assert cost_budget_exhausted("free", today=DAY1) is None
    assert not AgentCostBudget.objects.exists()
    cost_budget_set(agent_key="none", daily_limit=Decimal(0), actor=ADMIN)
    assert cost_budget_exhausted("none", today=DAY1) is not None


@pytest.mark.django_db
def test_setting_a_budget_is_validated_and_audited():
    with pytest.raises(GovernanceError):
        cost_budget_set(agent_key="a", daily_limit=Decimal("-1"), actor=ADMIN)
    assert not AuditEvent.objects.filter(action=AuditAction.COST_BUDGET_CHANGED).exists()
    cost_budget_set(agent_key="a", daily_limit=Decimal("2"), actor=ADMIN)
    cost_budget_set(agent_key="a", daily_limit=None, actor=ADMIN)
    events = AuditEvent.objects.filter(action=AuditAction.COST_BUDGET_CHANGED).order_by("id")
    assert [(e.data["before"], e.data["after"]) for e in events] == [(None, "2"), ("2.0000", None)]
    assert not AgentCostBudget.objects.exists()


@pytest.mark.django_db
def test_the_admin_saves_budgets_through_the_service(client):
    client.force_login(get_user_model().objects.create_superuser("gov", "g@example.com", "pw"))
    response = client.post(
        reverse("admin:governance_agentcostbudget_add"), {"agent_key": "claims.communication", "daily_limit": "5"}
    )
    assert response.status_code == 302
    assert AgentCostBudget.objects.get().daily_limit == Decimal("5")
    assert AuditEvent.objects.get(action=AuditAction.COST_BUDGET_CHANGED).actor_label == "gov"


@pytest.mark.django_db(transaction=True)
def test_concurrent_spending_adds_up_exactly():
    import threading

    from django.db import connection, connections

    from tests.conftest import postgres_only

    if connection.vendor != "postgresql":
        pytest.skip(postgres_only().kwargs["reason"])
    # given a budget on a day that has just ended, and 6 workers spending 10 x 0.01 each as the new day starts
    cost_budget_set(agent_key="busy", daily_limit=Decimal("100"), actor=ADMIN)
    cost_budget_consume(agent_key="busy", cost=Decimal("5"), today=DAY1)
    barrier = threading.Barrier(6)

    def spend():
        try:
            barrier.wait()
            for _ in range(10):
                cost_budget_consume(agent_key="busy", cost=Decimal("0.01"), today=DAY2)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=spend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # then the new day counts every spend once and nothing of the old day
    budget = AgentCostBudget.objects.get(agent_key="busy")
    assert (budget.day, budget.spent) == (DAY2, Decimal("0.60"))
