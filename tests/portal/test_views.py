"""Portal pages: scoping (another queue's ids are 404 everywhere), read-only roles (403 on every POST), the queue's
filters and htmx partials, case search, the dashboard and the demo logins."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from operations.models import CaseStatus, Escalation, EscalationStatus
from tests.portal.helpers import SIU, escalate

pytestmark = pytest.mark.django_db


@pytest.fixture
def handlers_item(claim_generator):
    return escalate(claim_generator, amount=Decimal("1500.00"))


APPROVE = {"resolution": "approve", "note": "n", "reason_code": "verified"}


def _id_urls(pk):
    return [
        ("get", reverse("portal:escalation", args=[pk]), {}),
        ("post", reverse("portal:escalation-resolve", args=[pk]), APPROVE),
        ("post", reverse("portal:escalation-claim", args=[pk]), {}),
        ("post", reverse("portal:escalation-release", args=[pk]), {}),
        ("post", reverse("portal:escalations-reassign"), {"ids": [pk], "queue": SIU, "note": "n"}),
    ]  # fmt: skip


def test_another_queues_escalation_is_404_on_every_id_taking_url(client, people, handlers_item):
    client.force_login(people["siu"])
    for method, url, data in _id_urls(handlers_item.pk):
        response = getattr(client, method)(url, data)
        assert response.status_code == 404, (method, url, response.status_code)
    handlers_item.refresh_from_db()
    assert handlers_item.status == EscalationStatus.OPEN and handlers_item.queue != SIU
    assert handlers_item.claimed_by is None


def test_another_queues_escalations_are_absent_from_lists_counts_and_exports(client, people, handlers_item):
    client.force_login(people["siu"])
    listing = client.get(reverse("portal:escalations"))
    export = client.get(reverse("portal:escalations-export"))
    home = client.get(reverse("portal:home"))
    case_page = client.get(reverse("portal:case", args=[handlers_item.case_id]))

    assert reverse("portal:escalation", args=[handlers_item.pk]) not in listing.content.decode()
    assert b"".join(export.streaming_content).decode().count("\n") == 1  # the header only
    assert home.context["open_escalations"] == 0
    assert case_page.context["escalations"] == []

    client.force_login(people["handler"])
    export = b"".join(client.get(reverse("portal:escalations-export")).streaming_content).decode()
    assert f"\r\n{handlers_item.pk}," in export
    assert client.get(reverse("portal:home")).context["open_escalations"] == 1


def test_an_auditor_reads_everything_but_every_post_is_403(client, people, handlers_item):
    client.force_login(people["auditor"])
    assert client.get(reverse("portal:escalations")).status_code == 200
    assert client.get(reverse("portal:escalation", args=[handlers_item.pk])).status_code == 200
    assert client.get(reverse("portal:dashboard")).status_code == 200
    for _, url, data in _id_urls(handlers_item.pk)[1:]:
        assert client.post(url, data).status_code == 403, url
    assert client.post(reverse("portal:escalation-claim-next")).status_code == 403
    handlers_item.refresh_from_db()
    assert handlers_item.status == EscalationStatus.OPEN and handlers_item.claimed_by is None


def test_a_user_without_a_portal_role_sees_no_cases_and_no_dashboard(client, handlers_item, django_user_model):
    client.force_login(django_user_model.objects.create_user("visitor", password="x" * 12))
    assert client.get(reverse("portal:case", args=[handlers_item.case_id])).status_code == 404
    assert client.get(reverse("portal:dashboard")).status_code == 403


def test_claim_next_then_resolve_from_the_pages(client, people, handlers_item):
    client.force_login(people["handler"])
    response = client.post(reverse("portal:escalation-claim-next"))
    assert response.status_code == 302 and response.url == reverse("portal:escalation", args=[handlers_item.pk])

    page = client.get(response.url)
    assert b"held by <b>handler</b>" in page.content and b"Similar past escalations" in page.content

    response = client.post(
        reverse("portal:escalation-resolve", args=[handlers_item.pk]),
        {"resolution": "amend", "amount": "1400.00", "outcome": "approve", "note": "labour"}
        | {"reason_code": "amount_corrected"},
    )
    assert response.status_code == 302
    handlers_item.refresh_from_db()
    assert handlers_item.status == EscalationStatus.RESOLVED and handlers_item.reason_code == "amount_corrected"


def test_the_resolve_form_requires_a_reason_code(client, people, handlers_item):
    client.force_login(people["handler"])
    response = client.post(
        reverse("portal:escalation-resolve", args=[handlers_item.pk]), {"resolution": "approve", "note": "ok"}
    )
    assert response.status_code == 400 and "reason_code" in response.context["form"].errors


def test_a_losing_concurrent_resolver_sees_a_clear_message(client, people, handlers_item):
    client.force_login(people["handler"])
    data = {"resolution": "approve", "note": "ok", "reason_code": "verified"}
    client.post(reverse("portal:escalation-resolve", args=[handlers_item.pk]), data)
    client.force_login(people["ann"])
    response = client.post(reverse("portal:escalation-resolve", args=[handlers_item.pk]), data, follow=True)
    assert "already resolved by handler" in response.content.decode()


def test_four_eyes_from_the_pages(client, people, claim_generator):
    item = escalate(claim_generator, amount=Decimal("12500.00"))
    data = {"resolution": "approve", "note": "checked", "reason_code": "verified"}
    client.force_login(people["senior"])
    first = client.post(reverse("portal:escalation-resolve", args=[item.pk]), data, follow=True)
    assert "a second person must approve" in first.content.decode()
    mine = client.get(reverse("portal:escalation", args=[item.pk]))
    assert "A different person must approve it" in mine.content.decode()

    client.force_login(people["handler"])
    client.post(reverse("portal:escalation-resolve", args=[item.pk]), data)
    item.refresh_from_db()
    assert item.status == EscalationStatus.RESOLVED and item.resolution_data["approvers"] == ["senior", "handler"]


def test_queue_filters_and_htmx_partial(client, people, claim_generator):
    now = timezone.now()
    breached = escalate(claim_generator, amount=Decimal("900"))
    big = escalate(claim_generator, amount=Decimal("20000"))
    Escalation.objects.filter(pk=breached.pk).update(sla_deadline=now - timedelta(minutes=1))
    Escalation.objects.filter(pk=big.pk).update(sla_deadline=now + timedelta(minutes=30), claimed_by=people["handler"])
    client.force_login(people["handler"])

    def ids(**params):
        response = client.get(reverse("portal:escalations"), params)
        return [e.pk for e in response.context["escalations"]]

    assert ids() == [breached.pk, big.pk]  # by SLA deadline
    assert ids(sla="breached") == [breached.pk]
    assert ids(sla="red") == [big.pk]
    assert ids(amount_min="10000") == [big.pk]
    assert ids(claimed="me") == [big.pk] and ids(claimed="unclaimed") == [breached.pk]
    assert ids(reason=breached.reason, amount_max="1000") == [breached.pk]
    assert ids(workflow="claims", priority="3") == []

    partial = client.get(reverse("portal:escalations"), {"sla": "breached"}, HTTP_HX_REQUEST="true")
    assert partial.templates[0].name == "operations/_escalation_queue.html"
    assert b"<html" not in partial.content and b"sla-breached" in partial.content


def test_queue_pages_with_a_bounded_count(client, people, claim_generator, monkeypatch):
    from operations import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    items = [escalate(claim_generator, amount=Decimal("100")) for _ in range(5)]
    escalate(claim_generator, queue=SIU)  # another queue's: neither listed nor counted for the handler
    client.force_login(people["handler"])

    first = client.get(reverse("portal:escalations"))
    last = client.get(reverse("portal:escalations"), {"page": 3})

    # then the count is exact below the bound, with the page range and the number of pages
    assert first.context["page"]["has_next"] and not last.context["page"]["has_next"]
    assert {e.pk for e in first.context["escalations"] + last.context["escalations"]} <= {e.pk for e in items}
    assert (first.context["page"]["count"], first.context["page"]["count_exact"], first.context["page"]["pages"]) == (
        5,
        True,
        3,
    )
    assert "1–2 of 5 · page 1 of 3" in first.content.decode()
    assert "5–5 of 5 · page 3 of 3" in last.content.decode()

    # and past the bound it stops counting: "3+", no last page
    monkeypatch.setattr(views, "COUNT_LIMIT", 3)
    bounded = client.get(reverse("portal:escalations"), {"page": 2})
    assert (bounded.context["page"]["count"], bounded.context["page"]["count_exact"]) == (3, False)
    assert bounded.context["page"]["pages"] is None and bounded.context["page"]["has_next"]
    assert "3–4 of 3+ · page 2<" in bounded.content.decode() and "Last »" not in bounded.content.decode()
    home = client.get(reverse("portal:home")).context
    assert (home["open_escalations"], home["open_escalations_bounded"]) == (3, True)
    assert dict((s, (n, b)) for s, _, n, b in home["by_status"])["waiting"] == (3, True)


def test_bulk_reassign_from_the_queue(client, people, claim_generator):
    a, b = escalate(claim_generator), escalate(claim_generator)
    client.force_login(people["handler"])
    data = {"ids": [a.pk, b.pk], "queue": SIU, "note": "fraud ring"}
    client.post(reverse("portal:escalations-reassign"), data)
    assert Escalation.objects.filter(queue=SIU).count() == 0  # supervisors cannot move several

    client.force_login(people["senior"])
    client.post(reverse("portal:escalations-reassign"), data)
    assert Escalation.objects.filter(queue=SIU).count() == 2


def test_case_search_and_detail(client, people, claim_generator):
    from tests.helpers import settle, submit

    done = submit(claim_generator.claim("straight_through"))
    settle(done.pk)
    waiting = escalate(claim_generator)
    client.force_login(people["auditor"])

    def refs(**params):
        return [c.reference for c in client.get(reverse("portal:cases"), params).context["cases"]]

    assert refs(reference=done.reference[:-2].lower()) == [waiting.case.reference, done.reference]
    assert refs(status=CaseStatus.COMPLETED) == [done.reference]
    assert refs(workflow="claims", submitted_after=timezone.now().date().isoformat()) == [
        waiting.case.reference,
        done.reference,
    ]
    assert refs(submitted_before="2000-01-01") == []
    page = client.get(reverse("portal:case", args=[done.pk])).content.decode()
    for text in ("Steps, proposals and verdicts", "Payments and messages", "case.completed", "Payment"):
        assert text in page


def test_dashboard_renders_figures_and_a_partial_for_htmx(client, people, claim_generator):
    from tests.helpers import settle, submit

    done = submit(claim_generator.claim("straight_through"))
    settle(done.pk)
    escalate(claim_generator)
    client.force_login(people["senior"])

    page = client.get(reverse("portal:dashboard"))
    partial = client.get(reverse("portal:dashboard"), HTTP_HX_REQUEST="true")

    assert page.status_code == 200 and b'id="dashboard-data"' in page.content and b"chart.umd.min.js" in page.content
    assert b"<script>" not in page.content  # no inline scripts
    ctx = page.context
    assert ctx["throughput"]["today"] == {"in": 2, "out": 1}
    assert ctx["straight_through"]["untouched"] == 1 and ctx["straight_through"]["rate"] == 1.0
    assert ctx["by_reason"]["rows"][0]["n"] == 1
    assert ctx["cycle"]["n"] == 1 and ctx["cycle"]["p50"] is not None
    assert [q["queue"] for q in ctx["queues"]] == ["Claims handlers"]
    used = {a["agent"]: a["used_today"] for a in ctx["agents"]}
    done.refresh_from_db()
    assert used["claims.approval"] == Decimal(done.context["decisions"]["approval"]["amount"])
    step_counts = {c["step"].key: c for wf in ctx["workflows"] for c in wf["steps"]}
    assert step_counts["approval"]["escalated"] == 1
    assert partial.templates[0].name == "operations/_dashboard.html" and b"<html" not in partial.content


def test_ensure_admin_creates_roles_and_demo_users(claims_workflow, django_user_model, capsys, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("ensure_admin")
    call_command("ensure_admin")
    out = capsys.readouterr().out
    assert "admin /" in out and "handler /" in out and "senior /" in out and "auditor /" in out
    senior = django_user_model.objects.get(username="senior")
    assert set(senior.groups.values_list("name", flat=True)) == {
        "Senior supervisor",
        "Claims handlers",
        "Special investigations",
    }
    assert senior.check_password((tmp_path / "senior_password").read_text().strip())


def test_a_failed_payment_escalation_offers_retry_reject_or_cancel_and_retries_the_same_payment(
    client, people, claim_generator, settings
):
    from operations.models import OutboxEntry, OutboxStatus
    from tests.gateway_server import refused_payment_escalation

    # given a payment the gateway refused, escalated to the claims handlers
    escalation = refused_payment_escalation(claim_generator.claim("straight_through"), settings)
    entry = OutboxEntry.objects.get(escalation=escalation)
    client.force_login(people["handler"])
    url = reverse("portal:escalation-resolve", args=[escalation.pk])

    # when a handler opens it: the key, the amount and the gateway's answer are shown; approving is not offered
    page = client.get(reverse("portal:escalation", args=[escalation.pk])).content.decode()
    assert entry.idempotency_key in page and "the gateway answered 400" in page and str(entry.amount) in page
    offered = [
        value
        for value, _ in client.get(reverse("portal:escalation", args=[escalation.pk]))
        .context["form"]
        .fields["resolution"]
        .choices
    ]
    assert offered == ["reject", "retry", "cancel_case"]
    # and a forged approval is a form error that changes nothing
    approve = client.post(url, {"resolution": "approve", "note": "pay", "reason_code": "verified"})
    assert approve.status_code == 400 and "resolution" in approve.context["form"].errors
    assert Escalation.objects.get(pk=escalation.pk).status == EscalationStatus.OPEN
    # when they retry it
    retry = client.post(url, {"resolution": "retry", "note": "gateway fixed", "reason_code": "system_recovered"})

    # then the same entry is owed again and the case is back to completed
    assert retry.status_code == 302
    entry.refresh_from_db()
    assert entry.status == OutboxStatus.PENDING and OutboxEntry.objects.filter(case=entry.case).count() == 2
    assert entry.case.status == CaseStatus.COMPLETED
