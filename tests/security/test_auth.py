"""Login throttling, password rules, session expiry, denial logging, and error pages that leak nothing."""

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import include, path

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def _login(client, username, password):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR="203.0.113.7")


def test_repeated_failed_logins_lock_the_account_out_even_for_the_right_password(settings, django_user_model, caplog):
    # given login throttling on (the rest of the suite runs with it off) and a real user
    settings.AXES_ENABLED = True
    django_user_model.objects.create_user("victim", password=PASSWORD)
    client = Client()

    # when an attacker guesses wrong AXES_FAILURE_LIMIT times (the last guess already meets the lockout)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "victim", "guess").status_code == 200  # the form again, with an error
    assert _login(client, "victim", "guess").status_code == 429
    with caplog.at_level("WARNING", logger="selfops.security"):
        locked = _login(client, "victim", PASSWORD)

    # then even the right password is refused for the cool-off period, and the lockout is logged
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    assert any("locked out" in r.getMessage() and "/accounts/login/" in r.getMessage() for r in caplog.records)


def test_a_correct_login_below_the_limit_succeeds(settings, django_user_model):
    settings.AXES_ENABLED = True
    django_user_model.objects.create_user("forgetful", password=PASSWORD)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "forgetful", "typo")

    response = _login(client, "forgetful", PASSWORD)

    assert response.status_code == 302 and client.session.get("_auth_user_id")


@pytest.mark.parametrize("weak", ["short1", "password123", "1234567890123", "selfops-sam-2026"])
def test_weak_passwords_are_refused(django_user_model, weak):
    user = django_user_model(username="selfops-sam-2026", email="sam@example.com")
    with pytest.raises(ValidationError):
        validate_password(weak, user=user)


def test_sessions_expire(settings, django_user_model):
    # given a user who logs in
    django_user_model.objects.create_user("sam", password=PASSWORD)
    client = Client()
    _login(client, "sam", PASSWORD)

    # then the session cookie carries a bounded lifetime and the server-side session expires with it
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    assert 0 < int(cookie["max-age"]) == settings.SESSION_COOKIE_AGE <= 12 * 3600
    assert cookie["httponly"]
    assert client.session.get_expiry_age() == settings.SESSION_COOKIE_AGE


def test_a_permission_denial_in_the_admin_is_logged_with_user_and_path(django_user_model, caplog):
    # given a staff user outside the governance admin group
    user = django_user_model.objects.create_user("clerk", password=PASSWORD, is_staff=True)
    client = Client()
    client.force_login(user)

    # when they try to add a policy (reading policies is open to every staff user since the governance merge, as the
    # portal's governance page is to everyone signed in: adding one is what stays refused)
    with caplog.at_level("WARNING", logger="selfops.security"):
        response = client.get("/admin/governance/agentpolicy/add/")

    # then they are refused and the denial is in the security log
    assert response.status_code == 403
    messages = [r.getMessage() for r in caplog.records if r.name == "selfops.security"]
    assert any(
        "permission denied" in m and "user=clerk" in m and "/admin/governance/agentpolicy/add/" in m for m in messages
    )


SECRET_IN_ERROR = "db-password-hunter2-in-an-exception"


def _boom(request):
    raise RuntimeError(SECRET_IN_ERROR)


def _forbidden(request):
    from django.core.exceptions import PermissionDenied

    raise PermissionDenied(SECRET_IN_ERROR)


urlpatterns = [path("boom", _boom), path("forbidden", _forbidden), path("", include("selfops.urls"))]


@pytest.mark.parametrize(
    "url, status, heading",
    [
        ("/boom", 500, "Something went wrong"),
        ("/forbidden", 403, "Not allowed"),
        ("/nowhere/<b>x</b>", 404, "Not found"),
    ],
)
def test_error_pages_leak_nothing(settings, url, status, heading):
    # given production error handling (DEBUG off) and views that fail with secrets in their messages
    settings.DEBUG = False
    settings.ROOT_URLCONF = "tests.security.test_auth"
    client = Client(raise_request_exception=False)

    response = client.get(url)

    # then the page is ours and says nothing of the failure, the path, the settings or the code
    assert response.status_code == status
    body = response.content.decode()
    assert heading in body
    for leak in (SECRET_IN_ERROR, "Traceback", "RuntimeError", "<b>x</b>", "nowhere", "settings", "DEBUG", "SECRET"):
        assert leak not in body, leak
