from collections import Counter

import pytest

from operations.models import Case, CaseStatus, OutboxEntry
from operations.packs.claims.data import ClaimGenerator
from operations.packs.claims.install import policies_in_db
from tests.helpers import END_STATE, submit
from tests.workers import qcluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_real_cluster_settles_100_demo_claims_as_the_demo_data_intends(claims_workflow):
    # given 100 demo claims submitted (each enqueued in its own transaction)
    claims = ClaimGenerator(policies_in_db(), seed=2026).claims(100)
    cases = {submit(c).pk: c for c in claims}
    expected = Counter(c.expected for c in claims)

    # when a real qcluster works the queue
    with qcluster(workers=2) as proc:
        wait_until(lambda: not Case.objects.filter(status=CaseStatus.RUNNING).exists(), timeout=180, proc=proc)
        # and delivers every payment and letter the decisions owe
        wait_until(lambda: not OutboxEntry.objects.exclude(status="delivered").exists(), timeout=60, proc=proc)

    # then every claim is completed, rejected or waiting on an escalation, in the counts the scenarios dictate
    ended = dict(Case.objects.filter(pk__in=cases).values_list("pk", "status"))
    assert Counter(END_STATE.get(s, s) for s in ended.values()) == expected
    wrong = [cases[pk].scenario for pk, s in ended.items() if END_STATE.get(s) != cases[pk].expected]
    assert not wrong
    # and each completed claim was paid once
    completed = [pk for pk, s in ended.items() if s == CaseStatus.COMPLETED]
    assert OutboxEntry.objects.filter(case_id__in=completed, kind="payment").count() == len(completed)
    assert OutboxEntry.objects.filter(kind="message").count() == expected["completed"] + expected["rejected"]
