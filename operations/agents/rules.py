"""Rule agents: an agent defined in the admin as an ordered list of CEL rules, no deploy needed.

Each rule is ``{"id", "when", "outcome", "action", "amount", "confidence", "rationale"}``; ``when``, ``amount`` and
``confidence`` are CEL expressions over ``payload``, ``context`` and ``case`` (the same expression library as
governance). The first rule whose ``when`` holds makes the proposal; when none holds the agent fails (an agent error
that people see), since a silent default would decide without anyone having written it down.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import cel
from django.db import transaction

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from operations.agents import AgentContext, Proposal, ProposalError, RegisteredAgent
from operations.errors import ValidationFailed

VARIABLES = frozenset({"payload", "context", "case"})
RULE_FIELDS = frozenset({"id", "when", "outcome", "action", "amount", "confidence", "rationale"})
EXPRESSION_FIELDS = ("when", "amount", "confidence")
MAX_RULES = 200


@dataclass(frozen=True)
class CompiledRule:
    id: str
    when: Any
    outcome: str
    action: str
    amount: Any
    confidence: Any
    confidence_value: float | None
    rationale: str


def _compile(src: str) -> Any:
    program = cel.compile(src)
    unknown = set(program.variables()) - VARIABLES
    if unknown:
        raise ValueError(f"unknown name(s) {', '.join(sorted(unknown))}: use payload, context or case")
    return program


def rule_errors(rules: Any) -> dict[str, str]:
    """Every problem with ``rules``, by ``rules.<index>.<field>``; empty when the list can be saved."""
    if not isinstance(rules, list) or not rules:
        return {"rules": "must be a non-empty list of rules"}
    if len(rules) > MAX_RULES:
        return {"rules": f"at most {MAX_RULES} rules"}
    errors: dict[str, str] = {}
    for i, rule in enumerate(rules):
        where = f"rules.{i}"
        if not isinstance(rule, dict):
            errors[where] = "must be an object"
            continue
        if extra := set(rule) - RULE_FIELDS:
            errors[where] = f"unknown field(s): {', '.join(sorted(extra))}"
        if not isinstance(rule.get("when"), str) or not rule["when"].strip():
            errors[f"{where}.when"] = "a CEL condition is required (use true for a catch-all)"
        if not isinstance(rule.get("outcome"), str) or not rule["outcome"].strip():
            errors[f"{where}.outcome"] = "an outcome is required"
        for name in ("action", "rationale", "id"):
            if name in rule and not isinstance(rule[name], str):
                errors[f"{where}.{name}"] = "must be a string"
        confidence = rule.get("confidence", 1)
        if isinstance(confidence, int | float) and not isinstance(confidence, bool) and not 0 <= confidence <= 1:
            errors[f"{where}.confidence"] = "must be between 0 and 1"
        amount = rule.get("amount")
        if isinstance(amount, int | float) and not isinstance(amount, bool) and not 0 <= amount < 1e12:
            errors[f"{where}.amount"] = "must be zero or more (and below 10^12)"
        for name in EXPRESSION_FIELDS:
            src = rule.get(name)
            if name != "when" and (src is None or src == "" or isinstance(src, int | float)):
                continue
            if not isinstance(src, str):
                errors.setdefault(f"{where}.{name}", "must be a CEL expression (a string)")
                continue
            try:
                program = _compile(src)
            except ValueError as exc:
                errors[f"{where}.{name}"] = str(exc).splitlines()[0][:300]
                continue
            if name != "when" and (problem := _constant_problem(name, program)):
                errors[f"{where}.{name}"] = problem
    return errors


def _constant_problem(name: str, program) -> str:
    """An amount or confidence expression that uses no variable is a constant: check its value at save time."""
    if program.variables():
        return ""
    try:
        value = float(program.execute({}))
    except Exception:  # noqa: BLE001 (any failure of a constant is the author's error, shown on the form)
        return "this constant expression does not evaluate to a number"
    if name == "confidence" and not 0 <= value <= 1:
        return "must be between 0 and 1"
    if name == "amount" and not 0 <= value < 1e12:
        return "must be zero or more (and below 10^12)"
    return ""


def compile_rules(rules: list[dict]) -> list[CompiledRule]:
    if errors := rule_errors(rules):
        raise ValidationFailed("the rules are not valid", fields=errors)
    compiled = []
    for i, rule in enumerate(rules):
        amount = rule.get("amount")
        confidence = rule.get("confidence", 1)
        compiled.append(
            CompiledRule(
                id=rule.get("id") or f"rule-{i + 1}",
                when=_compile(rule["when"]),
                outcome=rule["outcome"].strip(),
                action=(rule.get("action") or "").strip(),
                amount=_compile(amount) if isinstance(amount, str) and amount.strip() else None,
                confidence=_compile(confidence) if isinstance(confidence, str) and confidence.strip() else None,
                confidence_value=float(confidence) if isinstance(confidence, int | float) else None,
                rationale=rule.get("rationale") or "",
            )
        )
    return compiled


def _number(value: Any, what: str, rule_id: str) -> Decimal:
    if isinstance(value, bool):
        raise ProposalError(f"rule {rule_id}: {what} is a boolean, not a number")
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ProposalError(f"rule {rule_id}: {what} {value!r} is not a number") from exc


def propose(rules: list[CompiledRule], *, payload: dict, context: dict, case: dict) -> Proposal:
    """The proposal of the first rule that holds. Raises ``ProposalError`` when an expression fails or none holds."""
    variables = {"payload": payload, "context": context, "case": case}
    for rule in rules:
        try:
            holds = rule.when.execute(variables)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ProposalError(f"rule {rule.id}: the condition could not be evaluated: {exc}") from exc
        if holds is not True:
            continue
        try:
            amount = rule.amount.execute(variables) if rule.amount is not None else None
            confidence = rule.confidence.execute(variables) if rule.confidence is not None else rule.confidence_value
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ProposalError(f"rule {rule.id}: an expression could not be evaluated: {exc}") from exc
        return Proposal(
            outcome=rule.outcome,
            action=rule.action,
            amount=_number(amount, "amount", rule.id).quantize(Decimal("0.01")) if amount is not None else None,
            confidence=float(_number(1 if confidence is None else confidence, "confidence", rule.id)),
            rationale=rule.rationale or f"rule {rule.id}",
            data={"rule": rule.id},
        )
    raise ProposalError("no rule matched this case")


def rule_agent_fn(rules: list[dict]):
    compiled = compile_rules(rules)

    def run(ctx: AgentContext) -> Proposal:
        case = {"id": ctx.case_id, "reference": ctx.reference, "workflow": ctx.workflow_key, "step": ctx.step_key}
        return propose(compiled, payload=ctx.payload, context=ctx.context, case=case)

    return run


_agents: dict[int, RegisteredAgent] = {}


def rule_agent(version_id: int) -> RegisteredAgent:
    """The runnable agent of one rule version; versions past draft never change, so it is cached by id."""
    registered = _agents.get(version_id)
    if registered is None:
        from operations.models import RuleAgentVersion

        row = RuleAgentVersion.objects.get(pk=version_id)
        registered = RegisteredAgent(
            key=row.agent_key,
            version=row.version,
            fn=rule_agent_fn(row.rules),
            description=row.description,
            kind="rule",
        )
        _agents[version_id] = registered
    return registered


def live_rule_agent(agent_key: str) -> RegisteredAgent | None:
    from operations.models import AgentVersionStatus, RuleAgentVersion

    version_id = (
        RuleAgentVersion.objects.filter(agent_key=agent_key, status=AgentVersionStatus.LIVE)
        .values_list("id", flat=True)
        .first()
    )
    return rule_agent(version_id) if version_id is not None else None


def clear_caches() -> None:
    _agents.clear()


# --- services ------------------------------------------------------------------------------------------------------


def rule_agent_save(*, agent_key: str, version: str, rules: list[dict], actor: Actor, description: str = ""):
    """Save a new draft rule agent version (refused with field errors if any expression is invalid) and enter it in
    the rollout as a draft ``AgentVersion``: it takes no traffic until it is replayed and promoted."""
    from operations.models import AgentKind, AgentVersion, RuleAgentVersion

    agent_key, version = (agent_key or "").strip(), (version or "").strip()
    fields = {}
    if not agent_key:
        fields["agent_key"] = "required"
    if not version:
        fields["version"] = "required"
    fields.update(rule_errors(rules))
    if fields:
        raise ValidationFailed("the rule agent cannot be saved", fields=fields)
    with transaction.atomic():
        if RuleAgentVersion.objects.filter(agent_key=agent_key, version=version).exists():
            raise ValidationFailed(f"{agent_key} already has a version {version}", fields={"version": "taken"})
        row = RuleAgentVersion.objects.create(
            agent_key=agent_key, version=version, rules=rules, description=description, created_by=actor.label
        )
        AgentVersion.objects.get_or_create(
            agent_key=agent_key,
            version=version,
            defaults={"kind": AgentKind.RULE, "description": description, "created_by": actor.label},
        )
        audit_record(
            actor=actor,
            action=AuditAction.RULE_AGENT_SAVED,
            subject=row,
            data={"agent_key": agent_key, "version": version, "rules": rules},
        )
    return row


def rule_agent_try(*, rules: list[dict], payload: Any, context: Any = None) -> Proposal:
    """What the rules would propose for a pasted payload (the admin's test panel). Changes nothing."""
    if not isinstance(payload, dict):
        raise ValidationFailed("the payload must be a JSON object", fields={"payload": "must be a JSON object"})
    if context is not None and not isinstance(context, dict):
        raise ValidationFailed("the context must be a JSON object", fields={"context": "must be a JSON object"})
    try:
        return propose(
            compile_rules(rules), payload=payload, context=context or {}, case={"id": 0, "reference": "test"}
        )
    except ProposalError as exc:
        raise ValidationFailed(str(exc), fields={"rules": str(exc)}) from exc
