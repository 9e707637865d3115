"""LLM agents against a real chat-completions server on 127.0.0.1: canned, malformed, slow and failing answers."""

from decimal import Decimal

import pytest

from audit.actors import Actor
from governance.models import AgentCostBudget
from governance.services import cost_budget_set
from operations.agents.llm import LLMConfig, LLMError, ask_json
from operations.models import Escalation, OutboxEntry, StepRun, StepRunStatus
from operations.selectors import agent_stats
from tests.chat_server import ChatServer
from tests.helpers import END_STATE, settle, submit

SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}
LETTER = {
    "subject": "Your claim is approved",
    "body": "Dear customer, we approved your claim and paid the amount to your account. Kind regards.",
}


@pytest.fixture
def chat():
    with ChatServer() as server:
        yield server


@pytest.fixture
def llm_settings(settings, chat):
    settings.SELFOPS_LLM = {
        "BASE_URL": chat.base_url,
        "MODEL": "test-model",
        "API_KEY": "sk-test",
        "TIMEOUT": 0.5,
        "PRICE_IN": "0.01",
        "PRICE_OUT": "0.03",
    }
    return settings


def config(chat, timeout=0.5):
    return LLMConfig(base_url=chat.base_url, model="m", api_key="k", timeout=timeout)


def test_ask_json_returns_a_valid_answer_and_sends_the_schema(chat):
    chat.script.append(("json", {"answer": 42}))
    assert ask_json(system="s", user="u", schema=SCHEMA, prompt_version="p1", config=config(chat)) == {"answer": 42}
    sent = chat.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["auth"] == "Bearer k"
    assert '"answer"' in sent["body"]["messages"][0]["content"]


def test_ask_json_retries_once_on_malformed_json_then_succeeds(chat):
    chat.script.extend([("text", "{not json"), ("json", {"answer": 7})])
    assert ask_json(system="s", user="u", schema=SCHEMA, prompt_version="p1", config=config(chat)) == {"answer": 7}
    assert len(chat.requests) == 2
    assert "invalid" in chat.requests[1]["body"]["messages"][-1]["content"]


def test_ask_json_gives_up_after_two_answers_off_schema(chat):
    chat.script.extend([("json", {"answer": "seven"}), ("json", {"other": 1})])
    with pytest.raises(LLMError, match="no valid answer after 2 tries"):
        ask_json(system="s", user="u", schema=SCHEMA, prompt_version="p1", config=config(chat))
    assert len(chat.requests) == 2


def test_ask_json_times_out_on_a_slow_answer(chat):
    chat.script.append(("slow", 1.5, {"answer": 1}))
    with pytest.raises(LLMError, match="did not answer within 0.3 s"):
        ask_json(system="s", user="u", schema=SCHEMA, prompt_version="p1", config=config(chat, timeout=0.3))


def test_ask_json_reports_a_server_error(chat):
    chat.script.append(("status", 500))
    with pytest.raises(LLMError, match="HTTP 500"):
        ask_json(system="s", user="u", schema=SCHEMA, prompt_version="p1", config=config(chat))
    assert len(chat.requests) == 1  # no hidden client retries: the engine counts attempts


def test_communication_drafts_the_letter_with_the_llm_and_records_usage(llm_settings, chat, claim_generator):
    # given a configured endpoint that answers every call with a letter
    chat.script.extend([("json", LETTER)] * 5)
    claim = claim_generator.claim("straight_through")
    # when the claim runs through
    case = submit(claim)
    settle(case.pk)
    case.refresh_from_db()
    # then the letter is the model's and the step records model, prompt version, tokens and cost
    assert END_STATE[case.status] == "completed"
    letter = OutboxEntry.objects.get(case=case, kind="message")
    assert letter.payload["subject"] == LETTER["subject"]
    run = StepRun.objects.get(case=case, step__key="communication")
    assert (run.llm_model, run.prompt_version, run.tokens_in, run.tokens_out) == ("test-model", "letter-v1", 120, 80)
    assert run.cost == Decimal("0.003600")  # 120 * 0.01 / 1000 + 80 * 0.03 / 1000
    assert StepRun.objects.get(case=case, step__key="intake").tokens_in is None
    # and the dashboard's selector sums tokens and money per agent version, with time per step
    stats = {s["agent_key"]: s for s in agent_stats()}
    comm = stats["claims.communication"]
    assert (comm["steps"], comm["tokens_in"], comm["tokens_out"], comm["cost"]) == (1, 120, 80, Decimal("0.0036"))
    assert comm["avg_ms"] > 0 and stats["claims.intake"]["tokens_in"] is None


def test_communication_falls_back_to_templates_without_an_llm(claim_generator):
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    letter = OutboxEntry.objects.get(case=case, kind="message")
    assert letter.payload["subject"].startswith("Your claim")
    assert "We have approved your claim" in letter.payload["body"]


def test_malformed_llm_output_becomes_an_agent_error_escalation(llm_settings, chat, claim_generator):
    # given an endpoint that only ever answers with broken JSON (3 attempts x 2 tries)
    chat.script.extend([("text", "Dear customer, ...")] * 6)
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    case.refresh_from_db()
    # then the case waits on people with reason agent_error, each failed attempt recorded with its tokens
    assert END_STATE[case.status] == "escalated"
    assert Escalation.objects.get(case=case).reason == "agent_error"
    failed = StepRun.objects.filter(case=case, step__key="communication", status=StepRunStatus.FAILED)
    assert failed.count() == 3
    assert "no valid answer" in failed.first().error
    assert failed.first().tokens_in == 240


def test_llm_timeout_becomes_an_agent_error_escalation(llm_settings, chat, claim_generator):
    chat.script.extend([("slow", 1.2, LETTER)] * 3)
    case = submit(claim_generator.claim("straight_through"))
    settle(case.pk)
    esc = Escalation.objects.get(case=case)
    assert esc.reason == "agent_error"
    assert "did not answer within 0.5 s" in esc.reasons[0]["message"]


def test_exhausted_cost_budget_sends_new_items_to_people(llm_settings, chat, claim_generator):
    # given a tiny daily budget for the communication agent, used up by the first letter
    cost_budget_set(agent_key="claims.communication", daily_limit=Decimal("0.003"), actor=Actor.system("test"))
    chat.script.extend([("json", LETTER)] * 5)
    first = submit(claim_generator.claim("straight_through"))
    settle(first.pk)
    first.refresh_from_db()
    assert END_STATE[first.status] == "completed"
    assert AgentCostBudget.objects.get(agent_key="claims.communication").spent == Decimal("0.0036")
    # when the next claim reaches the communication step
    second = submit(claim_generator.claim("straight_through"))
    settle(second.pk)
    second.refresh_from_db()
    # then it goes to people with reason cost_budget_exhausted, without calling the model and without a failure
    assert END_STATE[second.status] == "escalated"
    esc = Escalation.objects.get(case=second)
    assert esc.reason == "cost_budget_exhausted"
    assert esc.step.key == "communication"
    assert len(chat.requests) == 1
    assert not StepRun.objects.filter(case=second, status=StepRunStatus.FAILED).exists()
