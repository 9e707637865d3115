import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "openapi.yaml"
    # --validate checks it against the OpenAPI 3.1 meta-schema; --fail-on-warn refuses any guess drf-spectacular made
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def test_the_schema_is_openapi_3_1_and_documents_the_webhooks(schema):
    assert schema["openapi"] == "3.1.0"
    assert set(schema["webhooks"]) == {"case.completed", "case.rejected", "escalation.opened", "escalation.resolved"}
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_every_operation_names_its_error_responses(schema):
    missing = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            expected = {"401", "403", "429", "500"}
            if "{" in path:
                expected.add("404")
            if method == "post":
                expected |= {"400", "415"}
            lacking = expected - set(operation["responses"])
            if lacking:
                missing[f"{method} {path}"] = lacking
            errors = [c for c in operation["responses"] if c.startswith(("4", "5"))]
            for code in errors:
                ref = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/Error"), (path, method, code)
    assert missing == {}
    submit = schema["paths"]["/api/v1/cases/"]["post"]
    assert {"409", "422"} <= set(submit["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in submit["parameters"])


def test_docs_are_served_from_vendored_assets(client):
    page = client.get("/api/docs/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn." not in html and "unpkg" not in html
    assert "<script>" not in html  # the initialisation script is a file too (a strict CSP forbids inline scripts)
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200
    init = client.get("/api/docs/?script=")
    assert init.status_code == 200 and "SwaggerUIBundle" in init.content.decode()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(
    live_server, make_caller, claims_workflow, tmp_path
):
    """Fuzz every operation of the live API with a real client key: no 5xx, every response as documented."""
    exe = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert exe, "schemathesis is a test dependency"
    caller = make_caller("fuzzer", throttle_rate="100000/min")
    command = [
        exe,
        "run",
        f"{live_server.url}/api/schema/",
        "--header",
        f"Authorization: Bearer {caller.key}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--phases",
        "examples,fuzzing",
        "--max-examples",
        "10",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-shrink",
        "--request-timeout",
        "10",
        "--suppress-health-check",
        "all",
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-6000:]
