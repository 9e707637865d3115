"""The agent SDK: what an agent receives (``AgentContext``), what it returns (``Proposal``), and the registry.

An agent is a registered callable ``fn(ctx) -> Proposal``. It decides nothing on its own: governance judges the
proposal before any effect. Anything else it returns, raises or takes too long over is an agent error.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_AMOUNT = Decimal("1000000000")  # a proposal above a billion is malformed, not a claim


class ProposalError(ValueError):
    """An agent's output does not honour the Proposal contract."""


@dataclass(frozen=True)
class Proposal:
    """What an agent proposes for a step: the outcome (a transition key), the action, an optional amount, its
    confidence (0..1), a rationale a supervisor can read, and data merged into the case context."""

    outcome: str
    action: str = ""
    amount: Decimal | None = None
    confidence: float = 1.0
    rationale: str = ""
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.outcome, str) or not self.outcome:
            raise ProposalError("outcome must be a non-empty string")
        if not isinstance(self.action, str):
            raise ProposalError("action must be a string")
        if not isinstance(self.rationale, str):
            raise ProposalError("rationale must be a string")
        if self.amount is not None:
            if isinstance(self.amount, float | bool):
                raise ProposalError("amount must be a Decimal (or int or numeric string), not a float")
            try:
                amount = Decimal(self.amount)
            except (InvalidOperation, TypeError, ValueError) as exc:
                raise ProposalError(f"amount {self.amount!r} is not a number") from exc
            if not amount.is_finite() or amount < 0 or amount > MAX_AMOUNT:
                raise ProposalError(f"amount {self.amount!r} is out of range (0 .. {MAX_AMOUNT})")
            object.__setattr__(self, "amount", amount.quantize(Decimal("0.01")))
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, int | float | Decimal):
            raise ProposalError("confidence must be a number between 0 and 1")
        confidence = float(self.confidence)
        if math.isnan(confidence) or not 0.0 <= confidence <= 1.0:
            raise ProposalError(f"confidence {self.confidence!r} is not between 0 and 1")
        object.__setattr__(self, "confidence", confidence)
        if not isinstance(self.data, dict):
            raise ProposalError("data must be a dict")

    def as_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "action": self.action,
            "amount": str(self.amount) if self.amount is not None else None,
            "confidence": self.confidence,
            "rationale": self.rationale,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Proposal:
        return cls(
            outcome=data["outcome"],
            action=data.get("action", ""),
            amount=data.get("amount"),
            confidence=data.get("confidence", 1.0),
            rationale=data.get("rationale", ""),
            data=data.get("data") or {},
        )


@dataclass(frozen=True)
class AgentContext:
    """What an agent sees: the case's payload, the context prior steps added, reference data, its own policy, and a
    supervisor's instruction when a human returned the step to it."""

    case_id: int
    reference: str
    workflow_key: str
    step_key: str
    attempt: int
    payload: dict
    context: dict
    policy: Any = None
    instruction: str = ""
    lookup: Callable[[str, str], dict | None] = lambda namespace, key: None
    lookup_many: Callable[[str, list[str]], dict[str, dict]] = lambda namespace, keys: {}

    def reference_data(self, namespace: str, key: str) -> dict | None:
        """A reference record (a policy, a policyholder…) or None."""
        return self.lookup(namespace, key)

    def reference_data_many(self, namespace: str, keys: list[str]) -> dict[str, dict]:
        """The reference records among ``keys`` that exist, by key (one query)."""
        return self.lookup_many(namespace, keys) if keys else {}


@dataclass(frozen=True)
class RegisteredAgent:
    key: str
    version: str
    fn: Callable[[AgentContext], Proposal]
    description: str = ""
    kind: str = "code"


_registry: dict[str, RegisteredAgent] = {}
_versions: dict[tuple[str, str], RegisteredAgent] = {}


def agent(key: str, *, version: str = "1", description: str = "", kind: str = "code"):
    """Register ``fn(ctx) -> Proposal`` as the agent ``key`` (at ``version``; the last registration of a key is its
    default, every registered version stays reachable for the rollout)."""

    def register(fn):
        registered = RegisteredAgent(
            key=key, version=version, fn=fn, description=description or fn.__doc__ or "", kind=kind
        )
        _registry[key] = registered
        _versions[(key, version)] = registered
        return fn

    return register


def get_agent(key: str) -> RegisteredAgent | None:
    """The agent registered in code under ``key``, else the live rule agent defined in the admin (cached by
    version)."""
    registered = _registry.get(key)
    if registered is not None:
        return registered
    from operations.agents.rules import live_rule_agent

    return live_rule_agent(key)


def get_agent_version(key: str, version: str) -> RegisteredAgent | None:
    return _versions.get((key, version))


def registered_agents() -> dict[str, RegisteredAgent]:
    return dict(_registry)


# --- what one agent call cost (tokens, money), reported by the agent and stored on its StepRun --------------------

_usage: contextvars.ContextVar[dict | None] = contextvars.ContextVar("selfops_agent_usage", default=None)


def record_usage(*, model: str = "", prompt_version: str = "", tokens_in: int = 0, tokens_out: int = 0, cost=0):
    """Add a paid call's usage to the step being run (no-op outside a step)."""
    meter = _usage.get()
    if meter is None:
        return
    meter["llm_model"] = model or meter.get("llm_model", "")
    meter["prompt_version"] = prompt_version or meter.get("prompt_version", "")
    meter["tokens_in"] = (meter.get("tokens_in") or 0) + int(tokens_in or 0)
    meter["tokens_out"] = (meter.get("tokens_out") or 0) + int(tokens_out or 0)
    meter["cost"] = (meter.get("cost") or Decimal(0)) + Decimal(str(cost or 0))


@dataclass
class ResolvedAgent:
    """The agent version chosen for one step of one case (``operations.agents.versions.resolve``): calling ``fn``
    runs it and collects its usage; ``hold_reason`` set means the step must go to people without running it."""

    key: str
    version: str
    kind: str
    impl: Callable[[AgentContext], Proposal]
    hold_reason: str = ""
    hold_message: str = ""
    usage: dict = field(default_factory=dict)

    def fn(self, ctx: AgentContext) -> Proposal:
        token = _usage.set(self.usage)
        try:
            return self.impl(ctx)
        finally:
            _usage.reset(token)
