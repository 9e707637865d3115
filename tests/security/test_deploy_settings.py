"""Production settings: `check --deploy` is clean, every response carries the security headers, no template holds
inline script (the CSP forbids it), and no portal view opts out of CSRF."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DEBUG": "false",
    "ALLOWED_HOSTS": "selfops.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://selfops.example.com",
}


def _check_deploy(tmp_path, extra_env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "SESSION_", "CSRF_", "SELFOPS_HTTPS"))}
    env.pop("DATABASE_URL", None)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # scripts/test.sh sets it for the browser tests; never in production
    env.update(
        DJANGO_SETTINGS_MODULE="selfops.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        SELFOPS_VAR_DIR=str(tmp_path),
        **extra_env,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    # given the production environment: DEBUG off, a real host name (HTTPS on by default), a strong secret
    # when Django's deployment checks run on it
    result = _check_deploy(tmp_path, PRODUCTION_ENV)

    # then there is not a single warning
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_plain_http_so_the_clean_result_means_something(tmp_path):
    # given the loopback-only demo defaults (`make run` over http://127.0.0.1), HTTPS is off
    result = _check_deploy(tmp_path, {"DEBUG": "false", "SELFOPS_HTTPS": "false"})

    # then the deployment check names what production would lack
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stdout + result.stderr


def test_https_switch_drives_every_secure_setting(tmp_path):
    # given the production environment, settings are read fresh in a subprocess
    code = (
        "from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, s.X_FRAME_OPTIONS, s.SECURE_REFERRER_POLICY, "
        "getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"
    )
    env = {
        **os.environ,
        **PRODUCTION_ENV,
        "DJANGO_SETTINGS_MODULE": "selfops.settings",
        "SELFOPS_VAR_DIR": str(tmp_path),
    }
    env["SECURE_PROXY_SSL_HEADER"] = "HTTP_X_FORWARDED_PROTO,https"
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == [
        "True",
        "True",
        "True",
        "31536000",
        "True",
        "True",
        "DENY",
        "same-origin",
        "('HTTP_X_FORWARDED_PROTO',",
        "'https')",
    ]


@pytest.mark.django_db
def test_every_response_carries_csp_clickjacking_and_nosniff_headers(client):
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


def _template_dirs() -> list[Path]:
    dirs = [Path(d) for t in settings.TEMPLATES for d in t["DIRS"]]
    dirs += [p for p in ROOT.glob("*/templates") if p.is_dir() and ".venv" not in p.parts]
    return dirs


INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc\s*=)[^>]*>", re.IGNORECASE)
EVENT_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.IGNORECASE)
JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", re.IGNORECASE)


def test_no_template_holds_inline_script_or_event_handler_attributes():
    # given every template of the project
    templates = [p for d in _template_dirs() for p in d.rglob("*.html")]
    assert templates, "no templates found: the scan would pass vacuously"

    # then none holds what `script-src 'self'` would block
    offenders = []
    for path in templates:
        text = path.read_text()
        for pattern, what in ((INLINE_SCRIPT, "inline <script>"), (EVENT_HANDLER, "on* attribute"), (JS_URL, "js url")):
            offenders += [f"{path.relative_to(ROOT)}: {what}: {m.group(0)[:80]}" for m in pattern.finditer(text)]
    assert offenders == []


@pytest.mark.parametrize(
    "snippet, caught",
    [
        ("<script>alert(1)</script>", True),
        ('<script type="module">x()</script>', True),
        ('<script src="{% static "x.js" %}"></script>', False),
        ('<button onclick="go()">', True),
        ('<a href="javascript:go()">', True),
        ('<form method="post" action="/x">', False),
    ],
)
def test_the_template_scan_catches_what_it_claims(snippet, caught):
    found = any(p.search(snippet) for p in (INLINE_SCRIPT, EVENT_HANDLER, JS_URL))
    assert found is caught


def _views(resolver: URLResolver, prefix: str = ""):
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            yield from _views(pattern, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def test_no_view_outside_the_token_authenticated_api_is_csrf_exempt():
    # DRF's APIView is exempt by design: its SessionAuthentication enforces CSRF itself, key auth needs none
    from rest_framework.views import APIView

    exempt = []
    for route, view in _views(get_resolver()):
        if not getattr(view, "csrf_exempt", False):
            continue
        cls = getattr(view, "cls", None) or getattr(view, "view_class", None)
        if isinstance(cls, type) and issubclass(cls, APIView):
            continue
        exempt.append(route)
    assert exempt == []


@pytest.mark.django_db
def test_a_post_without_csrf_token_is_refused_and_logged(client, django_user_model, caplog):
    # given a logged-in user and a client that enforces CSRF like a browser
    from django.test import Client

    user = django_user_model.objects.create_user("mallory", password="x" * 12)
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(user)

    # when a form is posted without its token (a cross-site request)
    with caplog.at_level("WARNING", logger="selfops.security"):
        response = csrf_client.post("/escalations/1/resolve", {"resolution": "approve", "note": "x"})

    # then it is refused with our page, which says nothing of the mechanism's internals, and the denial is logged
    assert response.status_code == 403
    body = response.content.decode()
    assert "This form has expired" in body and "CSRF" not in body and "Traceback" not in body
    assert any("user=mallory" in r.getMessage() and "/escalations/1/resolve" in r.getMessage() for r in caplog.records)
