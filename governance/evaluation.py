"""The pure decision: does a proposal fall inside an agent's policy?

``evaluate`` takes a policy snapshot, the agent's proposal and a plain view of the case, touches no database, and
returns a verdict with every reason that applies. It never raises and never allows on error: anything unexpected
becomes an escalation with reason ``policy_error`` (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from governance.models import AutonomyLevel, policy_scope
from governance.rules import CompiledRule, compile_rules, rule_context, rule_needs

_LEVELS = frozenset(AutonomyLevel.values)  # the enum's .values builds a new list on every access


@dataclass(frozen=True)
class Reason:
    """Why a proposal is escalated: a stable code, a sentence a supervisor reads, and the values compared."""

    code: str
    message: str
    rule_id: str = ""
    values: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "rule_id": self.rule_id, "values": self.values}


@dataclass(frozen=True)
class Verdict:
    decision: str  # "allow" or "escalate"
    reasons: tuple[Reason, ...] = ()
    policy_version: int | None = None
    autonomy: str = ""
    policy_scope: str = ""  # the workflow step the policy was narrowed to ('' for the agent's general policy)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def primary_reason(self) -> str:
        return self.reasons[0].code if self.reasons else ""

    def as_dict(self) -> dict:
        return {
            "decision": self.decision,
            "reasons": [r.as_dict() for r in self.reasons],
            "policy_version": self.policy_version,
            "policy_scope": self.policy_scope,
            "autonomy": self.autonomy,
        }


@dataclass(frozen=True)
class PolicySnapshot:
    """An immutable, process-cacheable copy of one PolicyVersion."""

    agent_key: str
    version: int
    autonomy: str = AutonomyLevel.BOUNDED
    allowed_actions: tuple[str, ...] = ()
    max_amount: Decimal | None = None
    min_confidence: Decimal | None = None
    daily_amount_budget: Decimal | None = None
    hourly_decision_limit: int | None = None
    qa_sample_rate: Decimal = Decimal(0)
    rules: tuple[dict, ...] = ()
    workflow_key: str = ""  # with step_key: the one workflow step this policy is narrowed to
    step_key: str = ""
    # compiled once per snapshot (snapshots are cached per process by version id)
    compiled_rules: tuple[CompiledRule, ...] = field(default=(), init=False, compare=False, repr=False)
    rules_error: str = field(default="", init=False, compare=False, repr=False)
    rules_needs: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    terms_error: str = field(default="", init=False, compare=False, repr=False)  # checked once: snapshots are frozen

    def __post_init__(self):
        object.__setattr__(self, "terms_error", _terms_problem(self))
        try:
            object.__setattr__(self, "compiled_rules", compile_rules(list(self.rules)))
            object.__setattr__(self, "rules_needs", rule_needs(self.compiled_rules))
        except ValueError as exc:  # stored rules are validated on publish; should one still break, fail closed
            object.__setattr__(self, "rules_error", str(exc))

    @classmethod
    def from_version(cls, version) -> PolicySnapshot:
        return cls(
            agent_key=version.policy.agent_key,
            version=version.number,
            autonomy=version.autonomy,
            allowed_actions=tuple(version.allowed_actions or ()),
            max_amount=version.max_amount,
            min_confidence=version.min_confidence,
            daily_amount_budget=version.daily_amount_budget,
            hourly_decision_limit=version.hourly_decision_limit,
            qa_sample_rate=version.qa_sample_rate,
            rules=tuple(version.rules or ()),
            workflow_key=version.policy.workflow_key,
            step_key=version.policy.step_key,
        )

    @property
    def scope(self) -> str:
        return policy_scope(self.workflow_key, self.step_key)


def _money(value: Any) -> str:
    return f"{Decimal(value):,.2f}"


def _escalate(policy: PolicySnapshot | None, *reasons: Reason) -> Verdict:
    return Verdict(
        decision="escalate",
        reasons=tuple(reasons),
        policy_version=policy.version if policy else None,
        autonomy=policy.autonomy if policy else "",
        policy_scope=policy.scope if policy else "",
    )


def evaluate(policy: PolicySnapshot | None, proposal: Any, case: dict | None = None, *, prepared=None) -> Verdict:
    """Judge ``proposal`` (outcome, action, amount, confidence) against ``policy``; ``case`` is a plain dict view.
    ``prepared`` is an optional ``rules.case_context(policy.rules_needs, case)`` of this same case, reused by callers
    that judge many proposals of one case (it only saves converting the case into CEL values again)."""
    try:
        return _evaluate(policy, proposal, case or {}, prepared)
    except Exception as exc:  # fail closed: an error in the policy never lets a proposal through
        return _escalate(
            policy,
            Reason(
                code="policy_error", message=f"The policy could not be evaluated: {exc}", values={"error": str(exc)}
            ),
        )


def _terms_problem(policy: PolicySnapshot) -> str:
    """What is malformed in a policy's terms ('' when nothing is)."""
    if policy.autonomy not in _LEVELS:
        return f"unknown autonomy level {policy.autonomy!r}"
    if not all(isinstance(a, str) for a in policy.allowed_actions):
        return "the policy's allowed actions must be strings"
    for name in ("max_amount", "min_confidence", "daily_amount_budget"):
        value = getattr(policy, name)
        if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value < 0):
            return f"the policy's {name} {value!r} is not a non-negative amount"
    if policy.min_confidence is not None and policy.min_confidence > 1:
        return f"the policy's min_confidence {policy.min_confidence} is above 1"
    return ""


def _check_inputs(policy: PolicySnapshot, proposal: Any) -> None:
    """Raise ValueError on a malformed policy or proposal, so that garbage is judged ``policy_error``, never allowed
    because no rule happened to look at the broken field."""
    problem = getattr(policy, "terms_error", None)
    if problem is None:  # not a PolicySnapshot: check its terms now
        problem = _terms_problem(policy)
    if problem:
        raise ValueError(problem)
    for name in ("outcome", "action"):
        if not isinstance(getattr(proposal, name, None), str):
            raise ValueError(f"the proposal's {name} is not a string")
    amount = getattr(proposal, "amount", None)
    if amount is not None and (not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0):
        raise ValueError(f"the proposal amount {amount!r} is not a non-negative Decimal")
    confidence = getattr(proposal, "confidence", None)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, Decimal)) or not 0 <= confidence <= 1:
        raise ValueError(f"the proposal confidence {confidence!r} is not a number between 0 and 1")


def _evaluate(policy: PolicySnapshot | None, proposal: Any, case: dict, prepared=None) -> Verdict:
    if policy is None:
        return _escalate(None, Reason(code="no_policy", message="The agent has no published policy."))
    _check_inputs(policy, proposal)
    suffix = f" (policy v{policy.version}{f' of step {policy.scope}' if policy.step_key else ''})"
    if policy.autonomy == AutonomyLevel.OFF:
        return _escalate(policy, Reason(code="agent_off", message="The agent is switched off" + suffix))

    reasons: list[Reason] = []
    if policy.autonomy == AutonomyLevel.SHADOW:
        reasons.append(Reason(code="shadow", message="The agent runs in shadow mode: a human decides" + suffix))
    elif policy.autonomy == AutonomyLevel.SUPERVISED:
        reasons.append(
            Reason(code="supervised", message="The agent is supervised: a human approves every proposal" + suffix)
        )

    action = proposal.action
    if policy.allowed_actions and action not in policy.allowed_actions:
        reasons.append(
            Reason(
                code="action_not_allowed",
                message=f"action '{action}' is not among the allowed actions "
                f"{', '.join(policy.allowed_actions)}{suffix}",
                values={"action": action, "allowed": list(policy.allowed_actions)},
            )
        )

    amount = proposal.amount
    if amount is not None and policy.max_amount is not None:
        try:
            amount = Decimal(amount)
        except (InvalidOperation, TypeError, ValueError) as exc:
            raise ValueError(f"the proposal amount {amount!r} is not a number") from exc
        if amount > policy.max_amount:
            reasons.append(
                Reason(
                    code="amount_over_limit",
                    message=f"amount {_money(amount)} exceeds the agent limit {_money(policy.max_amount)}{suffix}",
                    values={"amount": str(amount), "limit": str(policy.max_amount)},
                )
            )

    confidence = proposal.confidence
    if policy.min_confidence is not None and Decimal(str(confidence)) < policy.min_confidence:
        reasons.append(
            Reason(
                code="low_confidence",
                message=f"confidence {float(confidence):.2f} is below the minimum {float(policy.min_confidence):.2f}"
                f"{suffix}",
                values={"confidence": float(confidence), "minimum": str(policy.min_confidence)},
            )
        )

    reasons.extend(_rule_reasons(policy, proposal, case, suffix, prepared))

    if reasons:
        return _escalate(policy, *reasons)
    return Verdict(decision="allow", policy_version=policy.version, autonomy=policy.autonomy, policy_scope=policy.scope)


def _rule_reasons(policy: PolicySnapshot, proposal: Any, case: dict, suffix: str, prepared=None) -> list[Reason]:
    """One reason per rule that does not hold; an error in a rule is a ``policy_error`` of that rule (fail closed)."""
    if policy.rules_error:
        return [
            Reason(
                code="policy_error",
                message=f"The policy's rules could not be compiled: {policy.rules_error}{suffix}",
                values={"error": policy.rules_error},
            )
        ]
    if not policy.compiled_rules:
        return []
    reasons = []
    context = rule_context(policy.rules_needs, proposal, case, prepared)
    for rule in policy.compiled_rules:
        try:
            result = rule.program.execute(context)
        except Exception as exc:
            reasons.append(
                Reason(
                    code="policy_error",
                    message=f"rule '{rule.id}' could not be evaluated: {str(exc)[:300]}{suffix}",
                    rule_id=rule.id,
                    values={"expression": rule.expression, "error": str(exc)[:300]},
                )
            )
            continue
        if result is not True:
            values = {"expression": rule.expression, "result": result if isinstance(result, bool) else repr(result)}
            if proposal.amount is not None:
                values["amount"] = str(proposal.amount)
            reasons.append(Reason(code=rule.reason_code, message=rule.message + suffix, rule_id=rule.id, values=values))
    return reasons
