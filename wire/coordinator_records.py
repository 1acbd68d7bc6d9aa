"""The `ParticipantInfo` and `PhaseReport` fields both sides map one to one.

The node (`party_node.transport.serde`) and the coordinator (`services.serde`) keep their own
records (a role is "host"/"collaborator" on the node, an IntEnum in the coordinator), but the
fields they copy by name are listed here once, so a field added to the proto is added to
both conversions. No torch, no services or party_node imports.
"""

from __future__ import annotations

from typing import Any

from heteronn.v1 import coordinator_pb2

#: ParticipantInfo fields with the same name and meaning in both sides' Participant.
PARTICIPANT_FIELDS = ("node_id", "feature_key", "address", "checkpoint_round", "checkpoint_batch")

#: PhaseReport fields with the same name and meaning in both sides' Report (besides metrics).
REPORT_FIELDS = (
    "round",
    "error",
    "train_size",
    "test_size",
    "split_digest",
    "finished",
    "test_requested",
    "checkpoint_round",
)


def participant_info(record: Any, role: int, **extra: Any) -> coordinator_pb2.ParticipantInfo:
    """A ParticipantInfo from a record with the shared fields; `role` as its wire number."""
    shared = {name: getattr(record, name) for name in PARTICIPANT_FIELDS}
    return coordinator_pb2.ParticipantInfo(role=role, **shared, **extra)


def participant_fields(info: coordinator_pb2.ParticipantInfo) -> dict[str, Any]:
    """The shared fields of a ParticipantInfo, as keyword arguments for a record."""
    return {name: getattr(info, name) for name in PARTICIPANT_FIELDS}


def report_fields(record: Any) -> dict[str, Any]:
    """The shared fields of a report (a PhaseReport or a record), metrics as a plain dict."""
    return {name: getattr(record, name) for name in REPORT_FIELDS} | {
        "metrics": dict(record.metrics)
    }
