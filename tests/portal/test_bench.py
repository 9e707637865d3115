"""`manage.py bench portal` at tiny sizes: the set-based loader, the page table, and the EXPLAIN check."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from operations.bench.portal_explain import check_queries
from operations.models import Case, CaseStatus, Escalation, EscalationStatus, StepRun
from tests.conftest import postgres_only

pytestmark = pytest.mark.django_db


def test_bench_portal_loads_a_history_and_prints_a_verdict_per_page(claims_workflow):
    out = StringIO()

    # a generous budget: timings on a shared test machine prove nothing; the table and the plans do
    call_command("bench_portal", cases=300, events=3000, open_escalations=50, runs=2, p95_budget=60_000, stdout=out)

    text = out.getvalue()
    assert "cases: 300 rows" in text and "audit events: 3,000 rows" in text and "rows/s" in text
    assert Case.objects.filter(status=CaseStatus.WAITING, submitted_by="bench").count() == 50
    assert Escalation.objects.filter(status=EscalationStatus.OPEN).count() == 50
    assert Escalation.objects.filter(status=EscalationStatus.RESOLVED).exists()
    assert StepRun.objects.filter(case__submitted_by="bench").count() == 900
    for page in ("queue", "queue page 20", "claim next", "escalation detail", "case search (reference)", "case detail"):
        assert f"\n{page} " in text
    assert "dashboard (no cache)" in text and "FAIL" not in text and "PASS: every page" in text
    if connection.vendor == "postgresql":
        assert "seq scan" not in text and text.count(" indexes ") >= 14
    # and a second run re-times the same history without loading it again
    again = StringIO()
    call_command("bench_portal", skip_load=True, runs=1, p95_budget=60_000, stdout=again)
    assert "loading" not in again.getvalue() and Case.objects.count() == 300


@postgres_only()
def test_the_explain_check_flags_a_sequential_scan_of_a_big_table(claims_workflow):
    with CaptureQueriesContext(connection) as captured:
        list(Case.objects.filter(submitted_by="nobody"))  # no index on submitted_by
        list(Case.objects.filter(pk=1))
        list(StepRun.objects.filter(case_id=1))

    offending = check_queries(list(captured.captured_queries), strict=True)

    assert [o["tables"] for o in offending] == [["operations_case"]]
    assert "submitted_by" in offending[0]["sql"]
