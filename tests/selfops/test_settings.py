import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from selfops.checks import q_cluster_retry_exceeds_timeout


@pytest.mark.parametrize(
    "conf, error_id",
    [
        ({"timeout": 60, "retry": 60, "max_attempts": 3}, "selfops.E002"),
        ({"timeout": 90, "retry": 60, "max_attempts": 3}, "selfops.E002"),
        ({"retry": 60, "max_attempts": 3}, "selfops.E001"),
        ({"timeout": 30, "retry": 60, "max_attempts": 0}, "selfops.E003"),
    ],
)
def test_the_cluster_config_is_refused_when_a_task_could_run_twice(settings, conf, error_id):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, **conf}
    if "timeout" not in conf:
        settings.Q_CLUSTER.pop("timeout")
    assert error_id in [e.id for e in q_cluster_retry_exceeds_timeout(None)]
    with pytest.raises(SystemCheckError):
        call_command("check")


def test_the_default_config_passes(settings):
    assert q_cluster_retry_exceeds_timeout(None) == []
    assert settings.TIME_ZONE == "UTC" and settings.USE_TZ


def test_healthz_touches_nothing(client):
    # no django_db mark: pytest-django fails the test if the view touches the database
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_and_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_the_portal_requires_login_and_serves_the_login_page(client):
    assert client.get("/").status_code == 302
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b"Log in" in page.content
