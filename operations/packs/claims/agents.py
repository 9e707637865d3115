"""The seven agents of the claims workflow. Deterministic: the same claim and reference data give the same proposal."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal

from operations.agents import AgentContext, Proposal, agent

POLICY_NUMBER = re.compile(r"^(AU|HO|TR|LI)-\d{6}$")
CENTS = Decimal("0.01")

REQUIRED_DETAILS = {
    "auto_collision": ["vehicle_registration"],
    "auto_glass": ["vehicle_registration"],
    "home_water": ["property_address"],
    "home_theft": ["property_address", "police_report_number"],
    "travel": ["trip_reference"],
    "liability": ["third_party_name"],
}
REQUIRED_DOCUMENTS = {
    "auto_collision": ["photo", "repair_estimate"],
    "auto_glass": ["photo", "invoice"],
    "home_water": ["photo", "plumber_invoice"],
    "home_theft": ["police_report", "receipt"],
    "travel": ["ticket", "receipt"],
    "liability": ["incident_report", "third_party_claim"],
}
# the amounts a claim of each type typically comes to (CLAIMS_DOMAIN.md)
TYPICAL_RANGE = {
    "auto_collision": (Decimal(800), Decimal(12000)),
    "auto_glass": (Decimal(150), Decimal(1200)),
    "home_water": (Decimal(1000), Decimal(40000)),
    "home_theft": (Decimal(500), Decimal(25000)),
    "travel": (Decimal(50), Decimal(3000)),
    "liability": (Decimal(2000), Decimal(150000)),
}
MIN_DOCUMENT_BYTES = 1024
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024


def _claimed(payload: dict) -> Decimal:
    return Decimal(str(payload["amount_claimed"])).quantize(CENTS)


def _decision(ctx: AgentContext, step: str) -> dict:
    return (ctx.context.get("decisions") or {}).get(step) or {}


@agent("claims.intake", description="Validates and normalises the submission.")
def intake(ctx: AgentContext) -> Proposal:
    p = ctx.payload
    problems = []
    if not POLICY_NUMBER.match(p["policy_number"]):
        problems.append(f"policy number '{p['policy_number']}' is not of the form XX-123456")
    try:
        loss_date = date.fromisoformat(p["loss_date"])
        if loss_date > date.today():
            problems.append("the loss date is in the future")
        elif loss_date < date.today() - timedelta(days=3 * 365):
            problems.append("the loss date is more than three years ago")
    except ValueError:
        problems.append(f"loss date '{p['loss_date']}' is not a date")
    if _claimed(p) <= 0:
        problems.append("the amount claimed must be positive")
    details = p.get("details") or {}
    problems += [
        f"'{f}' is required for a {p['claim_type']} claim"
        for f in REQUIRED_DETAILS[p["claim_type"]]
        if not details.get(f)
    ]
    if problems:
        return Proposal(
            outcome="incomplete",
            action="request_information",
            confidence=0.95,
            rationale="; ".join(problems),
            data={"letter": "request", "missing": problems},
        )
    return Proposal(
        outcome="accepted",
        action="accept",
        confidence=0.99,
        rationale="submission complete and valid",
        data={"claim_amount": str(_claimed(p))},
    )


@agent("claims.documents", description="Checks the required documents and looks for re-used ones.")
def documents(ctx: AgentContext) -> Proposal:
    p = ctx.payload
    docs = p.get("documents") or []
    kinds = {d["kind"] for d in docs if MIN_DOCUMENT_BYTES <= d["size_bytes"] <= MAX_DOCUMENT_BYTES}
    required = list(REQUIRED_DOCUMENTS[p["claim_type"]])
    if p["claim_type"] == "auto_collision" and p.get("other_party"):
        required.append("police_report")
    missing = [k for k in required if k not in kinds]
    if missing:
        return Proposal(
            outcome="missing_documents",
            action="request_documents",
            confidence=0.97,
            rationale=f"missing or unreadable: {', '.join(missing)}",
            data={"letter": "request", "missing": [f"document: {k}" for k in missing]},
        )
    seen = ctx.reference_data_many("document_hash", [d["sha256"] for d in docs])
    return Proposal(
        outcome="complete",
        action="accept_documents",
        confidence=0.97,
        rationale="all required documents present" + (f"; {len(seen)} seen on an earlier claim" if seen else ""),
        data={"reused_documents": sorted(seen)},
    )


@agent("claims.coverage", description="Checks the policy covers this loss: active, peril, waiting period, limits.")
def coverage(ctx: AgentContext) -> Proposal:
    p = ctx.payload
    policy = ctx.reference_data("policy", p["policy_number"])

    def deny(clause: str) -> Proposal:
        return Proposal(
            outcome="not_covered",
            action="deny_coverage",
            confidence=0.96,
            rationale=clause,
            data={"letter": "denial", "denial_clause": clause},
        )

    if policy is None:
        return deny("No policy with this number is on record.")
    loss = date.fromisoformat(p["loss_date"])
    start, end = date.fromisoformat(policy["start"]), date.fromisoformat(policy["end"])
    if not start <= loss <= end:
        return deny(f"Clause 1.2: the policy was not in force on {loss} (cover {start} to {end}).")
    limit = policy["limits"].get(p["claim_type"])
    if limit is None:
        return deny(f"Clause 3.1: the {policy['product']} policy does not cover {p['claim_type'].replace('_', ' ')}.")
    if loss < start + timedelta(days=policy.get("waiting_days", 0)):
        return deny(f"Clause 2.4: the loss falls within the {policy['waiting_days']}-day waiting period.")
    deductible = policy["deductibles"][p["claim_type"]]
    return Proposal(
        outcome="covered",
        action="confirm_coverage",
        confidence=0.98,
        rationale=f"covered up to {limit} with deductible {deductible}",
        data={
            "coverage_limit": str(limit),
            "deductible": str(deductible),
            "policy_start": policy["start"],
            "claims_last_year": policy.get("claims_last_year", 0),
            "holder": policy["holder"],
            "account_last4": policy["account_last4"],
        },
    )


@agent("claims.assessment", description="Estimates the payable amount with a confidence.")
def assessment(ctx: AgentContext) -> Proposal:
    p = ctx.payload
    claimed = _claimed(p)
    low, high = TYPICAL_RANGE[p["claim_type"]]
    # the estimate follows the claim inside the typical range and discounts what lies beyond it
    estimate = claimed if claimed <= high else high + (claimed - high) / 2
    limit = Decimal(ctx.context["coverage_limit"])
    deductible = Decimal(ctx.context["deductible"])
    payable = max(Decimal(0), min(estimate, limit) - deductible).quantize(CENTS)
    if low <= claimed <= high:
        confidence = 0.92
    elif claimed <= high * Decimal("1.5"):
        confidence = 0.75
    else:
        confidence = 0.45
    return Proposal(
        outcome="assessed",
        action="estimate",
        amount=payable,
        confidence=confidence,
        rationale=f"claimed {claimed}, estimate {estimate.quantize(CENTS)}, limit {limit}, deductible {deductible}",
        data={"estimate": str(estimate.quantize(CENTS)), "payable": str(payable), "assessment_confidence": confidence},
    )


REFER_CLAUSE = "Clause 7.1: the claim was reviewed by special investigations."


def fraud_signals(ctx: AgentContext) -> dict[str, float]:
    p = ctx.payload
    claimed = _claimed(p)
    signals = {}
    if ctx.context.get("reused_documents"):
        signals["reused_documents"] = 0.5
    start = ctx.context.get("policy_start")
    if start and date.fromisoformat(p["loss_date"]) < date.fromisoformat(start) + timedelta(days=30):
        signals["early_claim"] = 0.25
    if claimed >= 1000 and claimed % 500 == 0:
        signals["round_amount"] = 0.15
    if int(ctx.context.get("claims_last_year") or 0) >= 3:
        signals["frequent_claimant"] = 0.25
    estimate = Decimal(ctx.context.get("estimate") or claimed)
    if claimed > estimate * 2:
        signals["far_above_estimate"] = 0.2
    return signals


@agent("claims.approval", description="Approves, denies or refers the claim to special investigations.")
def approval(ctx: AgentContext) -> Proposal:
    signals = fraud_signals(ctx)
    score = round(min(1.0, sum(signals.values())), 2)
    assessed = _decision(ctx, "assessment")
    payable = Decimal(assessed.get("amount") or ctx.context.get("payable") or 0)
    human_assessed = assessed.get("decided_by", "").startswith("human")
    confidence = 0.9 if human_assessed else float(ctx.context.get("assessment_confidence", 0.9))
    data = {"fraud_score": score, "fraud_signals": sorted(signals)}
    if score >= 0.5:
        return Proposal(
            outcome="refer",
            action="refer",
            amount=payable,
            confidence=0.8,
            rationale=f"fraud risk {score:.2f}: {', '.join(sorted(signals))}",
            data={
                **data,
                "letter": "denial",
                "denial_clause": REFER_CLAUSE,
            },
        )
    if payable <= 0:
        return Proposal(
            outcome="deny",
            action="deny",
            confidence=0.95,
            rationale="the payable amount after the deductible is nil",
            data={**data, "letter": "denial", "denial_clause": "Clause 4.2: the loss is within the deductible."},
        )
    return Proposal(
        outcome="approve",
        action="approve",
        amount=payable,
        confidence=confidence,
        rationale=f"payable {payable}, fraud risk {score:.2f}",
        data={**data, "letter": "approval"},
    )


@agent("claims.investigation", description="Investigates a referred claim: clears it or confirms the fraud.")
def investigation(ctx: AgentContext) -> Proposal:
    signals = fraud_signals(ctx)
    score = round(min(1.0, sum(signals.values())), 2)
    payable = Decimal(_decision(ctx, "approval").get("amount") or 0)
    if "reused_documents" in signals or score >= 0.6:
        return Proposal(
            outcome="fraud_confirmed",
            action="confirm_fraud",
            confidence=min(0.95, 0.5 + score / 2),
            rationale=f"fraud risk {score:.2f}: {', '.join(sorted(signals))}",
            data={"letter": "denial", "investigation": "fraud_confirmed"},
        )
    return Proposal(
        outcome="cleared",
        action="clear",
        amount=payable,
        confidence=0.6,
        rationale=f"signals {', '.join(sorted(signals)) or 'none'} explained; pay {payable}",
        data={"letter": "approval", "investigation": "cleared"},
    )


@agent("claims.payment", description="Pays the approved amount to the policyholder's account.")
def payment(ctx: AgentContext) -> Proposal:
    approved = Decimal(_decision(ctx, "approval").get("amount") or 0)
    if approved <= 0:
        raise ValueError("no approved amount to pay")
    return Proposal(
        outcome="paid",
        action="pay",
        amount=approved,
        confidence=1.0,
        rationale=f"pay {approved} to the account ending {ctx.context.get('account_last4', '????')}",
        data={
            "paid_amount": str(approved),
            "effect": {"payee": ctx.context.get("holder", ""), "account_last4": ctx.context.get("account_last4", "")},
        },
    )


LETTERS = {
    "approval": (
        "approval_sent",
        "Your claim {reference} is approved",
        "Dear {name},\n\nWe have approved your claim {reference} and paid {amount} to your account ending "
        "{last4}.\n\nKind regards,\nClaims team",
    ),
    "denial": (
        "denial_sent",
        "Your claim {reference}",
        "Dear {name},\n\nWe are unable to pay your claim {reference}. {clause}\n\nThis decision was prepared with "
        "automated assistance. You may contest it and ask for a review by a person by replying to this letter "
        "within 60 days (GDPR Art. 22(3)).\n\nKind regards,\nClaims team",
    ),
    "request": (
        "request_sent",
        "We need more information for your claim {reference}",
        "Dear {name},\n\nTo process your claim {reference} we need: {missing}.\nPlease submit a new claim with "
        "these details.\n\nKind regards,\nClaims team",
    ),
}


LETTER_PROMPT_VERSION = "letter-v1"
LETTER_SCHEMA = {
    "type": "object",
    "required": ["subject", "body"],
    "additionalProperties": False,
    "properties": {
        "subject": {"type": "string", "minLength": 5, "maxLength": 200},
        "body": {"type": "string", "minLength": 40, "maxLength": 6000},
    },
}
LETTER_SYSTEM = (
    "You write short, clear and courteous letters from an insurer's claims team to a customer. Use only the facts "
    "given; never invent amounts, dates or clauses. A denial must say that the customer may contest it and ask for a "
    "review by a person within 60 days (GDPR Art. 22(3))."
)


def _draft_with_llm(kind: str, fields: dict, template_subject: str, template_body: str) -> dict:
    from operations.agents.llm import ask_json

    facts = {k: v for k, v in fields.items() if v}
    answer = ask_json(
        system=LETTER_SYSTEM,
        user=f"Write the {kind} letter. Facts: {facts}. The template letter for reference:\n{template_body}",
        schema=LETTER_SCHEMA,
        prompt_version=LETTER_PROMPT_VERSION,
    )
    if kind == "denial" and "22(3)" not in answer["body"]:
        answer["body"] += "\n\n" + template_body.split("\n\n")[2]  # the right to contest is never left out
    return answer


@agent("claims.communication", description="Writes the customer's letter for the outcome.", kind="llm")
def communication(ctx: AgentContext) -> Proposal:
    kind = ctx.context.get("letter") or "denial"
    outcome, subject, body = LETTERS[kind]
    claimant = ctx.payload["claimant"]
    fields = {
        "reference": ctx.reference,
        "name": claimant["name"],
        "amount": ctx.context.get("paid_amount", ""),
        "last4": ctx.context.get("account_last4", ""),
        "clause": ctx.context.get("denial_clause", ""),
        "missing": "; ".join(ctx.context.get("missing") or []),
    }
    subject, body = subject.format(**fields), body.format(**fields)
    from operations.agents.llm import llm_configured

    drafted_by = "template"
    if llm_configured():
        answer = _draft_with_llm(kind, fields, subject, body)
        subject, body, drafted_by = answer["subject"], answer["body"], "llm"
    return Proposal(
        outcome=outcome,
        action="send_letter",
        confidence=1.0,
        rationale=f"{kind} letter ({drafted_by})",
        data={
            "effect": {"to": claimant["email"], "subject": subject, "body": body, "letter": kind},
            "letter_drafted_by": drafted_by,
        },
    )
