"""Named policy rules as Common Expression Language (CEL) expressions, compiled once per policy snapshot.

A rule passes when its expression is ``true``; anything else (false, a non-boolean, an evaluation error) escalates.
Rules see two variables, built once per proposal:

- ``proposal``: ``outcome`` (string), ``action`` (string), ``amount`` (double, or ``null`` when the proposal has none),
  ``confidence`` (double), ``data`` (map);
- ``case``: ``id``, ``reference``, ``workflow`` (strings/ints), ``payload`` and ``context`` (the JSON maps as stored).

Money in rules is a *double*: Decimal amounts are converted with ``float()``, which rounds to the nearest double just as
CEL does for a literal such as ``2500.01``, so comparing an amount with a literal written to the cent is exact. Amounts
inside the payload keep their JSON type (the claims schema allows a string or a number), so write
``double(case.payload.amount_claimed)`` to compare them. CEL does not coerce types: comparing ``null`` with a number
is an evaluation error, which fails closed (``policy_error``); write
``proposal.amount == null || proposal.amount <= 10.0`` when the amount may be absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import cel

RULE_VARIABLES = ("proposal", "case")
# Field paths a rule may name below its variables; maps (payload, context, data) accept any key below them.
KNOWN_FIELDS = {
    "proposal": {"outcome": None, "action": None, "amount": None, "confidence": None, "rationale": None, "data": "*"},
    "case": {"id": None, "reference": None, "workflow": None, "payload": "*", "context": "*"},
}
RULE_KEYS = ("id", "expression", "reason_code", "message")
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_PATH = re.compile(r"(?<![\w.])(proposal|case)((?:\s*\.\s*[A-Za-z_]\w*)*)")
_STRING = re.compile(r"'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"", re.S)
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class CompiledRule:
    id: str
    reason_code: str
    message: str
    expression: str
    program: Any
    paths: tuple[tuple[str, tuple[str, ...]], ...]  # the field paths the rule names


def rule_errors(rules: Any) -> dict[str, str]:
    """Every problem with a list of rule definitions, by ``rules[i].<key>``; empty when they are all valid."""
    if rules in (None, ""):
        return {}
    if not isinstance(rules, list | tuple):
        return {"rules": "must be a list of rules"}
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            errors[where] = "must be an object with id, expression, reason_code and message"
            continue
        for key in RULE_KEYS:
            if not isinstance(rule.get(key), str) or not rule.get(key).strip():
                errors[f"{where}.{key}"] = "required (a non-empty string)"
        if unknown := sorted(set(rule) - set(RULE_KEYS)):
            errors[where] = f"unknown keys: {', '.join(unknown)}"
        rule_id = rule.get("id")
        if isinstance(rule_id, str) and rule_id:
            if rule_id in seen:
                errors[f"{where}.id"] = f"duplicate rule id '{rule_id}'"
            seen.add(rule_id)
        code = rule.get("reason_code")
        if isinstance(code, str) and code and not _CODE.match(code):
            errors[f"{where}.reason_code"] = "lower-case letters, digits and underscores, starting with a letter"
        expression = rule.get("expression")
        if isinstance(expression, str) and expression.strip() and (problem := expression_error(expression)):
            errors[f"{where}.expression"] = problem
    return errors


def expression_error(expression: str) -> str:
    """Why ``expression`` is not a valid rule ('' when it is): syntax, unknown variables, unknown fields."""
    if len(expression) > 2000:
        return "too long (2,000 characters at most)"
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        return f"syntax error: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
    bound = set(_MACRO_BINDING.findall(expression))
    unknown = sorted(set(program.variables()) - set(RULE_VARIABLES) - bound)
    if unknown:
        return f"unknown name {', '.join(repr(u) for u in unknown)}: a rule may only use 'proposal' and 'case'"
    for variable, path in _paths(expression):
        if path and path[0] not in KNOWN_FIELDS[variable]:
            known = ", ".join(f"{variable}.{f}" for f in KNOWN_FIELDS[variable])
            return f"unknown field '{variable}.{path[0]}' (known: {known})"
        if len(path) > 1 and KNOWN_FIELDS[variable][path[0]] is None:
            return f"'{variable}.{path[0]}' has no fields"
    return ""


def _paths(expression: str) -> list[tuple[str, list[str]]]:
    """The dotted paths below ``proposal`` and ``case`` an expression names; a trailing method call (``.all(``,
    ``.contains(``) is not a field."""
    code = _STRING.sub('""', expression)  # names inside string literals are not fields
    paths = []
    for m in _PATH.finditer(code):
        path = [p.strip() for p in m.group(2).split(".") if p.strip()]
        if path and code[m.end() :].lstrip().startswith("("):
            path = path[:-1]
        paths.append((m.group(1), path))
    return paths


def _needs(paths: list[tuple[str, list[str]]]) -> dict:
    """A trie of what rules read: {variable: {field: {key: ...}}}, where ``None`` means "all of it" (a scalar, or a
    map that is indexed with [], passed to size(), compared whole, …)."""
    needs: dict = {}
    for variable, path in paths:
        node = needs
        for name in [variable, *path][:-1]:
            child = node.get(name, {})
            if child is None:
                break
            node = node.setdefault(name, child)
        else:
            node[([variable, *path])[-1]] = None
    return needs


def compile_rules(rules: Any) -> tuple[CompiledRule, ...]:
    """Compile valid rule definitions; raises ``ValueError`` listing the problems otherwise."""
    if errors := rule_errors(rules):
        raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    compiled = []
    for rule in rules or ():
        expression = rule["expression"]
        compiled.append(
            CompiledRule(
                id=rule["id"],
                reason_code=rule["reason_code"],
                message=rule["message"],
                expression=expression,
                program=cel.compile(expression),
                paths=tuple((v, tuple(p)) for v, p in _paths(expression)),
            )
        )
    return tuple(compiled)


def rule_needs(rules: tuple[CompiledRule, ...]) -> dict:
    """What of ``proposal`` and ``case`` a set of compiled rules reads (computed once per snapshot)."""
    return _needs([(v, list(p)) for r in rules for v, p in r.paths])


def _number(value: Decimal | float | int | None) -> float | None:
    return None if value is None else float(value)


def _project(value: Any, wanted: dict | None) -> Any:
    if wanted is None or not isinstance(value, dict):
        return value
    return {name: _project(value[name], sub) for name, sub in wanted.items() if name in value}


def _proposal_view(wanted: dict | None, proposal: Any) -> dict:
    """The ``proposal`` variable with only the fields rules read (``None``: all of them)."""
    if wanted is None:
        wanted = dict.fromkeys(KNOWN_FIELDS["proposal"])
    view = {}
    for name, sub in wanted.items():
        if name in ("amount", "confidence"):
            view[name] = _number(getattr(proposal, name, None))
        elif name == "rationale":
            view[name] = getattr(proposal, "rationale", "")
        elif name == "data":
            view[name] = _project(getattr(proposal, "data", None) or {}, sub)
        else:
            view[name] = getattr(proposal, name)
    return view


def case_context(needs: dict, case: dict) -> cel.Context:
    """A CEL context holding only the ``case`` fields rules read. Converting a map into CEL values costs far more
    than evaluating a rule, so a caller judging several proposals of one case (the backtest) builds this once per
    case and hands it to ``rule_context``."""
    return cel.Context({"case": _project(case, needs["case"])} if "case" in needs else {})


def rule_context(needs: dict, proposal: Any, case: dict, prepared: cel.Context | None = None) -> cel.Context:
    """The variables rules see, with only the fields some rule names. ``prepared`` (from ``case_context``, for this
    same case) already holds the case: only the proposal is added to it."""
    if prepared is None:
        prepared = case_context(needs, case)
    if "proposal" in needs:
        prepared.add_variable("proposal", _proposal_view(needs["proposal"], proposal))
    return prepared
