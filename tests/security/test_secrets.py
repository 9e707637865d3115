"""Secrets never land in the repository, the logs or the audit trail."""

import json
import logging
import subprocess
from pathlib import Path

import pytest
from django.test import Client

from audit.models import AuditEvent
from operations.models import Case, OutboxEntry, StepRun
from operations.services import outbox_deliver
from tests.helpers import settle, submit

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "SECRET_KEY": "test-secret-key-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c1e",
    "OPENAI_API_KEY": "sk-test-llm-key-4b6d8f0a2c4e6a8b0d2f4a6c",
    "SELFOPS_LLM_API_KEY": "llm-test-key-9e8d7c6b5a4f3e2d1c0b",
    "api key": "sok_test_api_key_1a2b3c4d5e6f7a8b9c0d",
    "password": "correct horse battery staple 42",
}


@pytest.mark.django_db
def test_a_claim_flow_with_secrets_configured_leaks_none_into_logs_or_audit(
    claim_generator, settings, monkeypatch, caplog, django_user_model
):
    # given every secret configured where the code could reach it
    settings.SECRET_KEY = SECRETS["SECRET_KEY"]
    for name in ("OPENAI_API_KEY", "SELFOPS_LLM_API_KEY"):
        monkeypatch.setenv(name, SECRETS[name])
    monkeypatch.setenv("SELFOPS_API_KEY", SECRETS["api key"])
    user = django_user_model.objects.create_user("sam", password=SECRETS["password"])

    # when claims go all the way through, with everything logged at DEBUG, and a person logs in (once wrongly)
    with caplog.at_level(logging.DEBUG):
        cases = [submit(claim_generator.claim(s)) for s in ("straight_through", "over_limit", "fraud_signals")]
        settle(*[c.pk for c in cases])
        for key in OutboxEntry.objects.values_list("idempotency_key", flat=True):
            outbox_deliver(idempotency_key=key)
        client = Client()
        client.post("/accounts/login/", {"username": "sam", "password": SECRETS["password"] + "x"})
        client.post(
            "/accounts/login/", {"username": "sam", "password": SECRETS["password"]}, HTTP_X_API_KEY=SECRETS["api key"]
        )
        client.get("/escalations/")
        client.post(
            "/escalations/999999/resolve",
            {"note": SECRETS["api key"]},
            HTTP_AUTHORIZATION=f"Bearer {SECRETS['api key']}",
        )

    # then no secret appears in any log record, audit event, case or step record
    assert user.pk and caplog.records, "nothing was logged: the test would pass vacuously"
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    stored = json.dumps(
        [
            list(AuditEvent.objects.values("actor_id", "actor_label", "subject_label", "data")),
            list(Case.objects.values("payload", "context", "submitted_by")),
            list(StepRun.objects.values("proposal", "verdict", "error")),
            list(OutboxEntry.objects.values("payload", "last_error")),
        ],
        default=str,
    )
    assert AuditEvent.objects.count() > 10
    for name, secret in SECRETS.items():
        assert secret not in logged, f"{name} leaked into the logs"
        assert secret not in stored, f"{name} leaked into stored records"


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def test_no_secret_is_committed():
    files = _tracked_files()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    # the generated secret key, the admin password and .env files live in var/ or are ignored
    assert not {n for n in names if n.startswith("var/") or n.endswith((".env", "secret_key", "admin_password"))}
    offenders = []
    for path in files:
        if path.suffix in (".png", ".ico", ".woff", ".woff2", ".gz") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        for marker in (f"-----BEGIN {kind}PRIVATE KEY" for kind in ("", "RSA ", "EC ", "OPENSSH ")):
            if marker in text:
                offenders.append(f"{path.name}: {marker}")
        for line in text.splitlines():
            stripped = line.replace(" ", "")
            if stripped.startswith(('SECRET_KEY="', "SECRET_KEY='")) and "tests/" not in path.as_posix():
                offenders.append(f"{path.name}: {line.strip()[:40]}")
    assert offenders == []
