"""A supervisor's day in a real browser: claim the next escalation, amend and approve it, see the case complete; a
four-eyes approval that needs a second login; a stop switch seen from the portal."""

from decimal import Decimal

import pytest

from operations.models import Case, CaseStatus, Escalation, EscalationStatus
from tests.helpers import settle
from tests.portal.helpers import HANDLERS, SIU, escalate, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _login(page, live_server, username):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-" + username * 3)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def _logout(page):
    page.click("header .logout button")
    page.wait_for_url("**/accounts/login/")


def test_claim_next_amend_and_approve_then_the_case_completes(page, live_server, claim_generator, artifacts):
    make_user("handler", "Supervisor", HANDLERS)
    escalation = escalate(claim_generator, amount=Decimal("6400.00"))
    _login(page, live_server, "handler")

    page.goto(f"{live_server.url}/escalations/")
    assert page.locator("table.queue tbody tr").count() == 1
    assert page.locator(".sla").first.text_content().endswith("left")  # the countdown script ran
    page.screenshot(path=str(artifacts / "queue.png"), full_page=True)

    page.click("#claim-next")
    page.wait_for_url(f"**/escalations/{escalation.pk}/")
    assert "held by handler" in page.locator(".toolbar").inner_text()
    page.select_option("#id_resolution", "amend")
    assert page.locator("#id_amount").is_visible()
    page.select_option("#id_reason_code", "amount_corrected")
    page.fill("#id_amount", "5900.00")
    page.select_option("#id_outcome", "approve")
    page.fill("#id_note", "Labour hours reduced to the standard rate.")
    page.screenshot(path=str(artifacts / "escalation.png"), full_page=True)
    page.click("#resolve")
    page.wait_for_url("**/escalations/")
    assert "resolved" in page.locator(".flash").inner_text()

    settle(escalation.case_id)  # the workers' part, in this process
    page.goto(f"{live_server.url}/cases/{escalation.case_id}/")
    assert page.locator("h1 .badge").inner_text() == "Completed"
    assert "5900.00" in page.locator("text=Payments and messages >> xpath=following::table[1]").inner_text()

    page.goto(f"{live_server.url}/dashboard/")
    page.wait_for_function("() => document.querySelector('#chart-series') && window.Chart !== undefined")
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)


def test_four_eyes_needs_a_second_login(page, live_server, claim_generator):
    make_user("senior", "Senior supervisor", HANDLERS, SIU)
    make_user("handler", "Supervisor", HANDLERS)
    escalation = escalate(claim_generator, amount=Decimal("12500.00"))

    def approve(username):
        _login(page, live_server, username)
        page.goto(f"{live_server.url}/escalations/{escalation.pk}/")
        page.select_option("#id_resolution", "approve")
        page.select_option("#id_reason_code", "verified")
        page.fill("#id_note", f"checked by {username}")
        page.click("#resolve")
        page.wait_for_url("**/escalations/")
        message = page.locator(".flash").inner_text()
        _logout(page)
        return message

    assert "a second person must approve" in approve("senior")
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.OPEN
    assert "resolved" in approve("handler")

    settle(escalation.case_id)
    assert Case.objects.get(pk=escalation.case_id).status == CaseStatus.COMPLETED


def test_a_stopped_agent_is_visible_in_the_portal(page, live_server, claim_generator):
    from audit.actors import Actor
    from governance.services import stop_engage
    from tests.helpers import submit

    make_user("senior", "Senior supervisor", HANDLERS, SIU)
    stop_engage(scope="agent", target="claims.intake", reason="suspected model drift", actor=Actor.system("test"))
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    assert Case.objects.get(pk=case.pk).wait_reason == "stopped"

    _login(page, live_server, "senior")
    page.goto(f"{live_server.url}/cases/{case.pk}/")
    assert "Parked by a stop switch" in page.locator("main").inner_text()
    page.goto(f"{live_server.url}/dashboard/")
    assert page.locator(".flow .node[data-step=intake] .c-waiting").inner_text().endswith("1")
    banners = page.locator(".banner")  # the site-wide stop banner (templates/_banners.html, governance's part)
    if banners.count():
        assert "claims.intake" in banners.first.inner_text() or "stop" in banners.first.inner_text().lower()
