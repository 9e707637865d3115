import pytest

from audit.actors import Actor
from audit.models import AuditEvent
from operations.agents.llm import llm_config, llm_endpoint_configure
from operations.errors import ValidationFailed
from operations.models import LLMEndpoint

pytestmark = pytest.mark.django_db
ADMIN = Actor.system("test-admin")


def test_the_admins_endpoint_wins_over_the_environment_field_by_field(settings):
    settings.SELFOPS_LLM = {
        "BASE_URL": "http://env.example/v1",
        "MODEL": "env-model",
        "API_KEY": "env-key",
        "TIMEOUT": 8.0,
        "PRICE_IN": "0",
        "PRICE_OUT": "0",
    }
    assert llm_config().model == "env-model"

    llm_endpoint_configure(
        actor=ADMIN, base_url="http://127.0.0.1:9/v1", model="", api_key="sk-admin-secret-123", timeout=3.0
    )

    config = llm_config()
    assert (config.base_url, config.model, config.api_key, config.timeout) == (
        "http://127.0.0.1:9/v1",
        "env-model",
        "sk-admin-secret-123",
        3.0,
    )
    # the key is kept when not given again, and the audit trail never holds it
    llm_endpoint_configure(actor=ADMIN, base_url="http://127.0.0.1:9/v1", model="m2", api_key=None)
    assert llm_config().api_key == "sk-admin-secret-123"
    events = list(AuditEvent.objects.filter(action="agent.llm_endpoint_changed").values_list("data", flat=True))
    assert [e["key_changed"] for e in events] == [True, False]
    assert "sk-admin-secret-123" not in str(events)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"base_url": "not a url", "model": "m"}, "base_url"),
        ({"base_url": "http://x.example/v1", "model": "m", "timeout": 600}, "__all__"),
    ],
)
def test_a_bad_endpoint_is_refused_and_nothing_is_saved(settings, kwargs, field):
    settings.SELFOPS_LLM = {}
    with pytest.raises(ValidationFailed) as err:
        llm_endpoint_configure(actor=ADMIN, **kwargs)
    assert field in err.value.fields
    assert not LLMEndpoint.objects.exists()


def test_the_admin_saves_through_the_service_and_never_shows_the_key(admin_client):
    response = admin_client.post(
        "/admin/operations/llmendpoint/add/",
        {
            "active": "on",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "letters-1",
            "api_key": "sk-from-admin-456",
            "timeout": "5",
            "price_in": "0.5",
            "price_out": "1.5",
        },
    )
    assert response.status_code == 302
    row = LLMEndpoint.objects.get()
    assert (row.model, row.api_key, row.updated_by) == ("letters-1", "sk-from-admin-456", "admin")
    page = admin_client.get(f"/admin/operations/llmendpoint/{row.pk}/change/")
    assert page.status_code == 200 and b"sk-from-admin-456" not in page.content
