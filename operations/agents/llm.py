"""LLM agents: a JSON answer from any OpenAI-compatible chat-completions endpoint, validated against a JSON Schema.

The endpoint, model and key come from the environment (``SELFOPS_LLM_BASE_URL``, ``SELFOPS_LLM_MODEL``,
``SELFOPS_LLM_API_KEY``; prices per thousand tokens in ``SELFOPS_LLM_PRICE_IN`` / ``SELFOPS_LLM_PRICE_OUT``). An answer
that is not JSON or does not match the schema is asked for once more with the error; a second bad answer, a timeout
or an HTTP error raises ``LLMError``, which the engine counts as an agent error. Every call's tokens and cost are
recorded on the step (``record_usage``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from jsonschema import Draft202012Validator

from operations.agents import record_usage


class LLMError(RuntimeError):
    """The language model did not give a usable answer."""


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str = ""
    timeout: float = 8.0
    price_in: Decimal = Decimal(0)  # per 1,000 prompt tokens
    price_out: Decimal = Decimal(0)  # per 1,000 completion tokens

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)

    def cost(self, tokens_in: int, tokens_out: int) -> Decimal:
        return ((self.price_in * tokens_in + self.price_out * tokens_out) / 1000).quantize(Decimal("0.000001"))


_endpoint_cache: tuple[float, object] = (0.0, None)
ENDPOINT_TTL = 5.0  # seconds a process keeps the admin's endpoint row before reading it again


def _admin_endpoint():
    """The endpoint row a governance admin configured, or None; read at most every few seconds per process."""
    import time

    from operations.models import LLMEndpoint

    global _endpoint_cache
    now = time.monotonic()
    if _endpoint_cache[0] <= now:
        _endpoint_cache = (now + ENDPOINT_TTL, LLMEndpoint.objects.filter(active=True).first())
    return _endpoint_cache[1]


def forget_endpoint() -> None:
    global _endpoint_cache
    _endpoint_cache = (0.0, None)


def llm_config() -> LLMConfig:
    """The endpoint to call: the admin's configuration where it sets a field, else the environment's."""
    conf = getattr(settings, "SELFOPS_LLM", {}) or {}
    row = _admin_endpoint()

    def pick(field: str, key: str, default):
        value = getattr(row, field, None) if row is not None else None
        return value if value not in (None, "") else conf.get(key, default)

    return LLMConfig(
        base_url=pick("base_url", "BASE_URL", ""),
        model=pick("model", "MODEL", ""),
        api_key=pick("api_key", "API_KEY", ""),
        timeout=float(pick("timeout", "TIMEOUT", 8.0)),
        price_in=Decimal(str(pick("price_in", "PRICE_IN", 0))),
        price_out=Decimal(str(pick("price_out", "PRICE_OUT", 0))),
    )


def llm_configured() -> bool:
    return llm_config().configured


def _answer(content: str | None, validator: Draft202012Validator) -> tuple[dict | None, str]:
    try:
        answer = json.loads(content or "")
    except ValueError as exc:
        return None, f"the answer is not JSON: {exc}"
    errors = sorted(validator.iter_errors(answer), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "answer"
        return None, f"the answer does not match the schema at {where}: {errors[0].message}"
    return answer, ""


def ask_json(
    *, system: str, user: str, schema: dict, prompt_version: str, config: LLMConfig | None = None, attempts: int = 2
) -> dict:
    """Ask for a JSON object matching ``schema``; one more try with the error when the answer is invalid."""
    config = config or llm_config()
    if not config.configured:
        raise LLMError("no language model is configured (SELFOPS_LLM_BASE_URL, SELFOPS_LLM_MODEL)")
    import openai  # imported on first use: it costs ~1.4 s and tens of MB, and most deployments use no LLM

    client = openai.OpenAI(
        base_url=config.base_url, api_key=config.api_key or "unused", timeout=config.timeout, max_retries=0
    )
    validator = Draft202012Validator(schema)
    messages = [
        {
            "role": "system",
            "content": f"{system}\nAnswer with one JSON object matching this JSON Schema:\n{json.dumps(schema)}",
        },
        {"role": "user", "content": user},
    ]
    problem = ""
    for _ in range(attempts):
        try:
            response = client.chat.completions.create(
                model=config.model, messages=messages, response_format={"type": "json_object"}, temperature=0
            )
        except openai.APITimeoutError as exc:
            raise LLMError(f"the language model did not answer within {config.timeout:g} s") from exc
        except openai.APIStatusError as exc:
            raise LLMError(f"the language model endpoint answered HTTP {exc.status_code}") from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"the language model call failed: {type(exc).__name__}: {exc}") from exc
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        record_usage(
            model=getattr(response, "model", "") or config.model,
            prompt_version=prompt_version,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost=config.cost(tokens_in, tokens_out),
        )
        content = response.choices[0].message.content if response.choices else None
        answer, problem = _answer(content, validator)
        if answer is not None:
            return answer
        messages += [
            {"role": "assistant", "content": content or ""},
            {"role": "user", "content": f"That answer was invalid: {problem}. Answer again with valid JSON only."},
        ]
    raise LLMError(f"the language model gave no valid answer after {attempts} tries: {problem}")


def llm_endpoint_errors(*, base_url: str | None, model: str | None) -> dict[str, str]:
    """What is wrong with an endpoint's address and model, by field (the admin's form shows it; the service
    refuses it)."""
    from urllib.parse import urlsplit

    base_url, model = (base_url or "").strip(), (model or "").strip()
    errors = {}
    if base_url and urlsplit(base_url).scheme not in ("http", "https"):
        errors["base_url"] = "an http(s) URL, e.g. https://llm.example/v1"
    if base_url and not model and not (getattr(settings, "SELFOPS_LLM", {}) or {}).get("MODEL"):
        errors["model"] = "a model is needed with a base URL"
    return errors


def llm_endpoint_configure(
    *,
    actor,
    active: bool = True,
    base_url: str = "",
    model: str = "",
    api_key: str | None = None,
    timeout: float | None = None,
    price_in=None,
    price_out=None,
):
    """Set the LLM endpoint from the admin (one row; ``api_key=None`` keeps the current key). Validated, audited
    (the key itself never enters the trail), and used by every process within a few seconds."""
    from django.core.exceptions import ValidationError
    from django.db import transaction

    from audit.models import AuditAction
    from audit.services import audit_record
    from operations.errors import ValidationFailed
    from operations.models import LLMEndpoint

    with transaction.atomic():
        row = LLMEndpoint.objects.select_for_update().order_by("pk").first() or LLMEndpoint()
        key_changed = api_key is not None and api_key != row.api_key
        row.active, row.base_url, row.model = active, (base_url or "").strip(), (model or "").strip()
        if api_key is not None:
            row.api_key = api_key.strip()
        row.timeout, row.price_in, row.price_out = timeout, price_in, price_out
        row.updated_by = actor.label
        if errors := llm_endpoint_errors(base_url=row.base_url, model=row.model):
            raise ValidationFailed(f"the LLM endpoint is not valid: {'; '.join(errors.values())}", fields=errors)
        try:
            row.full_clean()
        except ValidationError as exc:
            raise ValidationFailed(
                "the LLM endpoint is not valid", fields={k: "; ".join(v) for k, v in exc.message_dict.items()}
            ) from exc
        row.save()
        audit_record(
            actor=actor,
            action=AuditAction.LLM_ENDPOINT_CHANGED,
            subject=row,
            data={
                "active": row.active,
                "base_url": row.base_url,
                "model": row.model,
                "timeout": row.timeout,
                "price_in": row.price_in,
                "price_out": row.price_out,
                "key_changed": key_changed,
            },
        )
    forget_endpoint()
    return row
