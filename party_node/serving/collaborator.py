"""A collaborator's serving side, after the transport's checks (caller, model, limits): read
this party's features for the host's ids with its own hook and feature model, record the
call in the audit log, answer. Plain mode hands back the embedding; secure mode runs this
party's half of the CKKS forward (party_node.serving.secure_forward)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from party_node.serving.audit import AuditLog
from party_node.serving.bundle import Bundle, party_digest
from party_node.serving.hooks import FeatureRows, FeatureSource
from party_node.serving.models import CollaboratorModel


class CollaboratorServing:
    def __init__(
        self, scheduler: Any, bundle: Bundle, model: CollaboratorModel, audit: AuditLog
    ) -> None:
        self.bundle = bundle
        self.model = model
        self.audit = audit
        self.source = FeatureSource(
            scheduler, model.feature_model, f"collaborator '{bundle.node_id}'"
        )

    def describe(self) -> dict[str, Any]:
        """What DescribeModel answers (the host compares it with its own bundle)."""
        m = self.bundle.manifest
        width = self.model.width
        if self.bundle.mode == "secure":
            width = int(m["projection"]["out_dim"])
        return {
            "node_id": self.bundle.node_id,
            "model_id": self.bundle.model_id,
            "party_digest": party_digest(m),
            "task_id": m["task_id"],
            "final_round": int(m["final_round"]),
            "mode": self.bundle.mode,
            "participants": m["participants"],
            "parties": m["parties"],
            "output_width": width,
        }

    def features(self, caller: str, rpc: str, ids: Sequence[str], batch_id: str) -> FeatureRows:
        """This party's rows for `ids`, audited (the caller learns which ids exist here). A
        batch prediction's ids were audited with its PSI: its calls record counts only."""
        model_id, digests = self.bundle.model_id, not batch_id
        try:
            rows = self.source.read(ids)
        except Exception:
            self.audit.record(caller, rpc, ids, 0, batch_id, "hook_failed", model_id, digests)
            raise
        self.audit.record(caller, rpc, ids, rows.count, batch_id, "", model_id, digests)
        return rows
