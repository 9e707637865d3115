"""Installing the claims pack: workflow, default policies, reference data. Idempotent."""

from __future__ import annotations

from django.db import transaction

from audit.actors import Actor
from audit.models import AuditAction
from audit.services import audit_record
from governance.models import AgentPolicy
from governance.services import policy_publish
from operations.models import ReferenceRecord, Workflow
from operations.packs.claims.data import KNOWN_DOCUMENT_HASHES, generate_policies, known_document_hash
from operations.packs.claims.definition import POLICIES, WORKFLOW
from operations.services import workflow_install


def install(*, actor: Actor, policies: int = 20000) -> Workflow:
    workflow = workflow_install(definition=WORKFLOW, actor=actor)
    for agent_key, terms in POLICIES.items():
        if not AgentPolicy.objects.filter(agent_key=agent_key, step_key="", current_version__isnull=False).exists():
            policy_publish(agent_key=agent_key, actor=actor, note="claims demo pack defaults", **terms)
    load_reference_data(actor=actor, policies=policies)
    return workflow


def load_reference_data(*, actor: Actor, policies: int) -> int:
    records = [ReferenceRecord(namespace="policy", key=p["number"], data=p) for p in generate_policies(policies)]
    records += [
        ReferenceRecord(namespace="document_hash", key=known_document_hash(i), data={"first_seen": "last year"})
        for i in range(KNOWN_DOCUMENT_HASHES)
    ]
    with transaction.atomic():
        ReferenceRecord.objects.bulk_create(
            records, batch_size=2000, update_conflicts=True, unique_fields=["namespace", "key"], update_fields=["data"]
        )
        audit_record(
            actor=actor,
            action=AuditAction.REFERENCE_LOADED,
            subject_type="operations.referencerecord",
            subject_id="claims",
            subject_label="claims demo reference data",
            data={"policies": policies, "document_hashes": KNOWN_DOCUMENT_HASHES},
        )
    return len(records)


def policies_in_db() -> list[dict]:
    return list(ReferenceRecord.objects.filter(namespace="policy").values_list("data", flat=True))
