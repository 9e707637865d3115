"""The reason codes a supervisor chooses from when resolving an escalation, per resolution. Fixed in code so that
reports can count them; the note says the rest."""

REASON_CODES: dict[str, list[tuple[str, str]]] = {
    "approve": [
        ("verified", "Documents and amount verified"),
        ("within_policy", "Within policy after review"),
        ("customer_history", "Customer history supports it"),
        ("other", "Other (see note)"),
    ],
    "amend": [
        ("amount_corrected", "Amount corrected"),
        ("outcome_corrected", "Outcome corrected"),
        ("partial_cover", "Partly covered"),
        ("other", "Other (see note)"),
    ],
    "reject": [
        ("not_covered", "Not covered by the policy"),
        ("fraud_suspected", "Fraud suspected"),
        ("insufficient_evidence", "Insufficient evidence"),
        ("other", "Other (see note)"),
    ],
    "retry": [
        ("new_information", "New information available"),
        ("agent_error", "The agent erred; try again"),
        ("data_corrected", "Case data corrected"),
        ("system_recovered", "The outside system works again"),
        ("other", "Other (see note)"),
    ],
    "cancel_case": [
        ("withdrawn", "Withdrawn by the customer"),
        ("duplicate", "Duplicate case"),
        ("opened_in_error", "Opened in error"),
        ("other", "Other (see note)"),
    ],
}


def reason_code_choices() -> list[tuple[str, str]]:
    """Every code once, for a form field (the service checks the code fits the resolution)."""
    seen: dict[str, str] = {}
    for codes in REASON_CODES.values():
        for code, label in codes:
            seen.setdefault(code, label)
    return list(seen.items())
