import json
from io import StringIO

import pytest
from django.core.management import call_command

from tests.conftest import postgres_only

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@postgres_only()
def test_bench_engine_prints_the_figures_the_ratios_and_the_scale_out_in_one_json_line(claims_workflow):
    # when the engine benchmark runs a few claims through one cluster, the references, then two clusters
    out = StringIO()
    call_command(
        "bench", "engine", "--cases", "30", "--reference-cases", "10", "--noop-tasks", "30", "--workers", "1",
        "--clusters", "2", "--json", stdout=out,
    )  # fmt: skip

    # then the last line is one JSON object with the stable keys, the same-run ratios and the scale-out
    text = out.getvalue()
    result = json.loads(text.strip().splitlines()[-1])
    for key in ("claims_per_s", "steps_per_s", "p95_latency_s", "queries_per_step", "noop_tasks_per_s"):
        assert result[key] > 0, key
    for key in ("ratio_vs_in_process", "ratio_vs_one_task_per_step", "steps_per_s_vs_noop_tasks_per_s"):
        assert result[key] > 0, key
    assert result["engine"]["claims"] == 30 and result["engine"]["steps_applied_twice"] == 0
    assert result["scale_out"]["clusters"] == 2 and result["scale_out"]["steps_applied_twice"] == 0
    assert "scale-out (same run): 2 clusters" in text
