"""The property-and-casualty claims workflow (CLAIMS_DOMAIN.md) and its default governance."""

from decimal import Decimal

WORKFLOW_KEY = "claims"

CLAIM_TYPES = ["auto_collision", "auto_glass", "home_water", "home_theft", "travel", "liability"]

PAYLOAD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["policy_number", "claim_type", "loss_date", "amount_claimed", "claimant", "documents"],
    "properties": {
        "policy_number": {"type": "string", "minLength": 1, "maxLength": 32},
        "claim_type": {"enum": CLAIM_TYPES},
        "loss_date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "amount_claimed": {
            "anyOf": [
                {"type": "string", "pattern": r"^\d{1,9}(\.\d{1,2})?$"},
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1000000000},
            ]
        },
        "description": {"type": "string", "maxLength": 4000},
        "other_party": {"type": "boolean"},
        "details": {
            "type": "object",
            "maxProperties": 20,
            "additionalProperties": {"type": "string", "maxLength": 200},
        },
        "claimant": {
            "type": "object",
            "required": ["name", "email"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "email": {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "maxLength": 254},
            },
        },
        "documents": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["kind", "sha256", "size_bytes"],
                "additionalProperties": False,
                "properties": {
                    "kind": {"type": "string", "maxLength": 50},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "size_bytes": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}

HANDLERS = "Claims handlers"
SIU = "Special investigations"

STEPS = [
    {
        "key": "intake",
        "name": "Intake",
        "agent_key": "claims.intake",
        "transitions": {"accepted": "documents", "incomplete": "communication"},
        "reject_outcome": "incomplete",
        "sla_seconds": 4 * 3600,
    },
    {
        "key": "documents",
        "name": "Document validation",
        "agent_key": "claims.documents",
        "transitions": {"complete": "coverage", "missing_documents": "communication"},
        "reject_outcome": "missing_documents",
        "sla_seconds": 8 * 3600,
    },
    {
        "key": "coverage",
        "name": "Coverage verification",
        "agent_key": "claims.coverage",
        "transitions": {"covered": "assessment", "not_covered": "communication"},
        "reject_outcome": "not_covered",
        "sla_seconds": 8 * 3600,
    },
    {
        "key": "assessment",
        "name": "Damage assessment",
        "agent_key": "claims.assessment",
        "transitions": {"assessed": "approval"},
        "sla_seconds": 24 * 3600,
    },
    {
        "key": "approval",
        "name": "Approval routing",
        "agent_key": "claims.approval",
        "transitions": {"approve": "payment", "deny": "communication", "refer": "investigation"},
        "reject_outcome": "deny",
        "action_queues": {"refer": SIU},
        "sla_seconds": 24 * 3600,
    },
    {
        # reached only by referrals a special investigator confirmed; its agent learns in shadow mode
        "key": "investigation",
        "name": "Fraud investigation",
        "agent_key": "claims.investigation",
        "transitions": {"cleared": "payment", "fraud_confirmed": "communication"},
        "reject_outcome": "fraud_confirmed",
        "escalation_queue": SIU,
        "sla_seconds": 72 * 3600,
    },
    {
        "key": "payment",
        "name": "Payment",
        "agent_key": "claims.payment",
        "transitions": {"paid": "communication"},
        "effect": "payment",
        "sla_seconds": 4 * 3600,
    },
    {
        "key": "communication",
        "name": "Customer communication",
        "agent_key": "claims.communication",
        "transitions": {"approval_sent": "@complete", "denial_sent": "@reject", "request_sent": "@reject"},
        "effect": "message",
        "sla_seconds": 4 * 3600,
    },
]
for _step in STEPS:
    _step.setdefault("escalation_queue", HANDLERS)

WORKFLOW = {
    "key": WORKFLOW_KEY,
    "name": "Property & casualty claims",
    "payload_schema": PAYLOAD_SCHEMA,
    "steps": STEPS,
}

# Authority limits of the demo insurer: a claims agent settles alone up to 5,000 with confidence 0.7 or more.
POLICIES = {
    "claims.intake": {"allowed_actions": ["accept", "request_information"], "min_confidence": Decimal("0.80")},
    "claims.documents": {"allowed_actions": ["accept_documents", "request_documents"]},
    "claims.coverage": {"allowed_actions": ["confirm_coverage", "deny_coverage"], "min_confidence": Decimal("0.80")},
    "claims.assessment": {
        "allowed_actions": ["estimate"],
        "min_confidence": Decimal("0.70"),
        "max_amount": Decimal("50000"),
    },
    "claims.approval": {
        "allowed_actions": ["approve", "deny"],
        "max_amount": Decimal("5000"),
        "min_confidence": Decimal("0.70"),
        # what the agent may settle alone per UTC day and decisions per hour; beyond, a handler decides. Sized for
        # the demo insurer (50,000 claims a month: ~1,700 a day, half approved alone at ~2,000 each) with room for
        # the benchmarks, which push a month through in minutes.
        "daily_amount_budget": Decimal("20000000"),
        "hourly_decision_limit": 200000,
        # one autonomous decision in twenty is reviewed afterwards (the case is not held)
        "qa_sample_rate": Decimal("0.05"),
        "rules": [
            {
                "id": "liability_by_handler",
                "expression": 'case.payload.claim_type != "liability"',
                "reason_code": "liability_claim",
                "message": "Liability claims are always decided by a claims handler",
            }
        ],
    },
    "claims.payment": {
        "allowed_actions": ["pay"],
        "max_amount": Decimal("250000"),
        "rules": [
            {
                "id": "pay_what_was_approved",
                "expression": "proposal.amount == null || "
                "proposal.amount <= double(case.context.decisions.approval.amount)",
                "reason_code": "payment_above_approval",
                "message": "The payment is larger than the approved amount",
            }
        ],
    },
    "claims.communication": {"allowed_actions": ["send_letter"]},
    # a new agent learning in shadow mode: it proposes, an investigator always decides, agreement is measured
    "claims.investigation": {"autonomy": "shadow", "allowed_actions": ["clear", "confirm_fraud"]},
}
