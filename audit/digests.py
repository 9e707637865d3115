"""Signed digests of the chain head: published or stored away from the database, they prove later that the history up
to them was not rewritten, even by someone who recomputed every hash in the table."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from audit.chain import utc_iso
from audit.sealing import chain_head

logger = logging.getLogger(__name__)
DIGEST_FIELDS = ("seq", "hash", "time")


class DigestError(Exception):
    """A digest file that is unreadable, unsigned, or signed with another key."""


def digest_key() -> bytes:
    """``AUDIT_DIGEST_KEY`` from settings; without one, a key derived from SECRET_KEY (rotating SECRET_KEY then
    invalidates every digest signed before: set AUDIT_DIGEST_KEY in production, see the README)."""
    key = getattr(settings, "AUDIT_DIGEST_KEY", "")
    if key:
        return key.encode()
    return hmac.new(settings.SECRET_KEY.encode(), b"selfops.audit.digest", hashlib.sha256).digest()


def _signed_bytes(digest: dict) -> bytes:
    return json.dumps({k: digest[k] for k in DIGEST_FIELDS}, sort_keys=True, separators=(",", ":")).encode()


def sign(digest: dict) -> dict:
    signature = hmac.new(digest_key(), _signed_bytes(digest), hashlib.sha256).hexdigest()
    return {**{k: digest[k] for k in DIGEST_FIELDS}, "alg": "HMAC-SHA256", "signature": signature}


def head_digest() -> dict:
    """The current head (sequence, hash, time of the digest), signed. An empty chain has seq 0."""
    seq, head_hash = chain_head()
    return sign({"seq": seq or 0, "hash": head_hash, "time": utc_iso(timezone.now())})


def check_signature(digest: dict) -> None:
    try:
        expected = sign(digest)["signature"]
    except (KeyError, TypeError) as exc:
        raise DigestError(f"not a digest: missing {exc}") from exc
    if not hmac.compare_digest(expected, str(digest.get("signature", ""))):
        raise DigestError("the digest's signature does not match: wrong key or an altered digest")


def load(path: str | Path) -> dict:
    try:
        digest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DigestError(f"cannot read digest {path}: {exc}") from exc
    if not isinstance(digest, dict):
        raise DigestError(f"{path} does not hold a digest object")
    check_signature(digest)
    return digest


def export_digest(folder: str | Path | None = None) -> Path:
    """Write the signed head digest to a new file in ``folder`` (``AUDIT_DIGEST_DIR``)."""
    folder = Path(folder or settings.AUDIT_DIGEST_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    digest = head_digest()
    stamp = digest["time"].replace(":", "").replace("-", "")
    path = folder / f"audit-digest-{digest['seq']:012d}-{stamp}.json"
    path.write_text(json.dumps(digest, indent=2) + "\n")
    logger.info("audit digest exported: seq %s to %s", digest["seq"], path)
    return path
