"""Deterministic demo data for the claims pack: policies (reference data) and a stream of synthetic claims.

Each synthetic claim is built for a *scenario* (straight-through, over the authority limit, fraud signals, not
covered, …), so the outcome it must reach is known in advance: tests and ``simulate`` check the engine against it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from operations.packs.claims.agents import REQUIRED_DETAILS, REQUIRED_DOCUMENTS, TYPICAL_RANGE

POLICY_SEED = 20260101
KNOWN_DOCUMENT_HASHES = 500

PRODUCTS = {
    # product: (policy number prefix, share, perils covered with their limit and deductible, waiting days)
    "auto": ("AU", 0.55, {"auto_collision": (30000, 500), "auto_glass": (2000, 50), "liability": (250000, 1000)}, 0),
    "home": ("HO", 0.30, {"home_water": (60000, 500), "home_theft": (30000, 250), "liability": (250000, 1000)}, 14),
    "travel": ("TR", 0.15, {"travel": (5000, 50)}, 0),
}
FIRST_NAMES = [
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Elif",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Luca",
    "Maja",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Sami",
    "Tereza",
    "Ugo",
    "Vera",
    "Wim",
    "Yusuf",
    "Zofia",
]
LAST_NAMES = [
    "Andersen",
    "Bianchi",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Horvat",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lambert",
    "Moreau",
    "Novak",
    "Oliveira",
    "Petrov",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Urban",
    "Weber",
    "Yilmaz",
    "Zimmermann",
]


def known_document_hash(i: int) -> str:
    return hashlib.sha256(f"selfops-demo-known-document-{i}".encode()).hexdigest()


def generate_policies(count: int, *, today: date | None = None, seed: int = POLICY_SEED) -> list[dict]:
    """``count`` policies, the same for the same seed and day. Every policy is in force today."""
    today = today or date.today()
    rng = random.Random(seed)
    products = list(PRODUCTS)
    weights = [PRODUCTS[p][1] for p in products]
    policies = []
    for i in range(1, count + 1):
        product = rng.choices(products, weights)[0]
        prefix, _, perils, waiting = PRODUCTS[product]
        start = today - timedelta(days=rng.randint(60, 330))
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        policies.append(
            {
                "number": f"{prefix}-{i:06d}",
                "product": product,
                "holder": name,
                "email": f"{name.split()[0].lower()}.{i}@customers.example",
                "start": start.isoformat(),
                "end": (start + timedelta(days=365)).isoformat(),
                "limits": {peril: limit for peril, (limit, _) in perils.items()},
                "deductibles": {peril: ded for peril, (_, ded) in perils.items()},
                "waiting_days": waiting,
                "claims_last_year": rng.choices([0, 1, 2, 3, 4], [70, 18, 7, 3, 2])[0],
                # a token and the last four digits only: never a full account number in data, events or logs
                "account_token": hashlib.sha256(f"acct-{seed}-{i}".encode()).hexdigest()[:24],
                "account_last4": f"{rng.randint(0, 9999):04d}",
            }
        )
    return policies


@dataclass(frozen=True)
class SyntheticClaim:
    reference: str
    payload: dict
    scenario: str
    expected: str  # the case's end state: "completed", "rejected" or "escalated" (waiting on a human)


SCENARIOS = {
    # scenario: (share, expected end state)
    "straight_through": (52, "completed"),
    "over_limit": (13, "escalated"),
    "low_confidence": (4, "escalated"),
    "fraud_signals": (7, "escalated"),
    "not_covered": (9, "rejected"),
    "incomplete": (5, "rejected"),
    "missing_documents": (6, "rejected"),
    "below_deductible": (4, "rejected"),
}


class ClaimGenerator:
    """Builds claims for scenarios against a given set of policies (read from the database by ``simulate``)."""

    def __init__(self, policies: list[dict], *, seed: int, today: date | None = None):
        self.today = today or date.today()
        self.rng = random.Random(seed)
        self.seed = seed
        self.by_peril: dict[str, list[dict]] = {}
        for policy in policies:
            if date.fromisoformat(policy["end"]) < self.today:
                continue
            for peril in policy["limits"]:
                self.by_peril.setdefault(peril, []).append(policy)
        if not self.by_peril:
            raise ValueError("no policy in force: run `manage.py load_demo` first")
        self.counter = 0

    def claims(self, n: int) -> list[SyntheticClaim]:
        return list(self.stream(n))

    def stream(self, n: int):
        """``n`` claims from the demo mix, built one at a time (a long demo stream never sits in memory)."""
        names = list(SCENARIOS)
        weights = [SCENARIOS[s][0] for s in names]
        for _ in range(n):
            yield self.claim(self.rng.choices(names, weights)[0])

    # --- building blocks ------------------------------------------------------------------------------------------

    def _policy(self, perils: list[str], *, calm: bool = True) -> tuple[str, dict]:
        """A policy covering one of ``perils``; calm: no fraud signal from the policy itself."""
        for _ in range(200):
            peril = self.rng.choice(perils)
            policy = self.rng.choice(self.by_peril[peril])
            if not calm or policy["claims_last_year"] < 3:
                return peril, policy
        raise ValueError("no suitable policy")

    def _loss_date(self, policy: dict) -> date:
        start = date.fromisoformat(policy["start"])
        earliest = start + timedelta(days=max(31, policy["waiting_days"] + 1))
        latest = min(self.today - timedelta(days=1), date.fromisoformat(policy["end"]))
        return earliest + timedelta(days=self.rng.randint(0, max(0, (latest - earliest).days)))

    def _amount(self, low: Decimal, high: Decimal) -> Decimal:
        cents = self.rng.randint(int(low * 100), int(high * 100))
        amount = Decimal(cents) / 100
        if amount >= 1000 and amount % 500 == 0:  # avoid the round-amount fraud signal by accident
            amount += Decimal("17.35")
        return amount.quantize(Decimal("0.01"))

    def _documents(self, claim_type: str, other_party: bool) -> list[dict]:
        kinds = list(REQUIRED_DOCUMENTS[claim_type]) + (["police_report"] if other_party else [])
        return [
            {
                "kind": kind,
                "sha256": hashlib.sha256(f"{self.seed}-{self.counter}-{kind}".encode()).hexdigest(),
                "size_bytes": self.rng.randint(40_000, 4_000_000),
            }
            for kind in kinds
        ]

    def _payload(self, policy: dict, claim_type: str, amount: Decimal, loss_date: date) -> dict:
        other_party = claim_type == "auto_collision" and self.rng.random() < 0.3
        return {
            "policy_number": policy["number"],
            "claim_type": claim_type,
            "loss_date": loss_date.isoformat(),
            "amount_claimed": str(amount),
            "description": f"{claim_type.replace('_', ' ').capitalize()} on {loss_date.isoformat()}",
            "other_party": other_party,
            "details": {field: f"{field.replace('_', ' ')} {self.counter}" for field in REQUIRED_DETAILS[claim_type]},
            "claimant": {"name": policy["holder"], "email": policy["email"]},
            "documents": self._documents(claim_type, other_party),
        }

    def claim(self, scenario: str) -> SyntheticClaim:
        self.counter += 1
        reference = f"CLM-{self.seed % 1_000_000:06d}-{self.counter:06d}"
        payload = getattr(self, f"_{scenario}")()
        return SyntheticClaim(reference=reference, payload=payload, scenario=scenario, expected=SCENARIOS[scenario][1])

    # --- scenarios -------------------------------------------------------------------------------------------------

    def _payable_range(self, policy: dict, peril: str, *, up_to: Decimal) -> tuple[Decimal, Decimal]:
        low, high = TYPICAL_RANGE[peril]
        ded = Decimal(policy["deductibles"][peril])
        return max(low, ded + 1), min(high, Decimal(policy["limits"][peril]), up_to + ded)

    def _straight_through(self) -> dict:
        peril, policy = self._policy(["auto_glass", "travel", "auto_collision", "home_water", "home_theft"])
        low, high = self._payable_range(policy, peril, up_to=Decimal(5000))
        return self._payload(policy, peril, self._amount(low, high), self._loss_date(policy))

    def _over_limit(self) -> dict:
        peril, policy = self._policy(["auto_collision", "home_water", "home_theft"])
        ded = Decimal(policy["deductibles"][peril])
        _, high = TYPICAL_RANGE[peril]
        return self._payload(policy, peril, self._amount(Decimal(5200) + ded, high), self._loss_date(policy))

    def _low_confidence(self) -> dict:
        peril, policy = self._policy(["travel", "auto_glass"])
        _, high = TYPICAL_RANGE[peril]
        return self._payload(policy, peril, self._amount(high * 2, high * 3), self._loss_date(policy))

    def _fraud_signals(self) -> dict:
        peril, policy = self._policy(["auto_glass", "travel", "auto_collision"])
        low, high = self._payable_range(policy, peril, up_to=Decimal(5000))
        payload = self._payload(policy, peril, self._amount(low, high), self._loss_date(policy))
        payload["documents"][0]["sha256"] = known_document_hash(self.rng.randrange(KNOWN_DOCUMENT_HASHES))
        return payload

    def _not_covered(self) -> dict:
        peril, policy = self._policy(["auto_glass", "travel", "auto_collision", "home_water"])
        low, high = self._payable_range(policy, peril, up_to=Decimal(5000))
        if self.rng.random() < 0.5:  # a loss before the policy started
            loss_date = date.fromisoformat(policy["start"]) - timedelta(days=self.rng.randint(5, 60))
            return self._payload(policy, peril, self._amount(low, high), loss_date)
        uncovered = "travel" if policy["product"] != "travel" else "auto_glass"  # a peril the product excludes
        return self._payload(policy, uncovered, self._amount(*TYPICAL_RANGE[uncovered]), self._loss_date(policy))

    def _incomplete(self) -> dict:
        payload = self._straight_through()
        if self.rng.random() < 0.5:
            payload["policy_number"] = payload["policy_number"].replace("-", " ").lower()
        else:
            payload["details"] = {}
        return payload

    def _missing_documents(self) -> dict:
        payload = self._straight_through()
        payload["documents"] = payload["documents"][1:]
        return payload

    def _below_deductible(self) -> dict:
        # a small collision claim, not above the 500 deductible: nothing payable, the agent denies it
        peril, policy = self._policy(["auto_collision"])
        amount = self._amount(Decimal(120), Decimal(policy["deductibles"][peril]))
        return self._payload(policy, peril, amount, self._loss_date(policy))
