"""Paired to/from-proto functions between the runtime's records and the wire messages.
The only place (with the servicer and clients) that touches `_pb2` types."""

from __future__ import annotations

from heteronn.v1 import common_pb2, coordinator_pb2
from party_node.runtime.links import Command, Message, Participant, Report
from services.client import phase_name
from wire.coordinator_records import participant_fields, participant_info, report_fields
from wire.tensor_codec import tensor_from_proto, tensor_to_proto

_ROLE_TO_PB = {"host": common_pb2.ROLE_HOST, "collaborator": common_pb2.ROLE_COLLABORATOR}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}


def message_to_payload(msg: Message, task_id: str, sender: str, seq: int = 0) -> common_pb2.Payload:
    header = common_pb2.Header(
        task_id=task_id,
        round=msg.round,
        batch=msg.batch,
        sender=sender,
        kind=msg.kind,
        seq=seq,
        checkpoint=msg.checkpoint,
    )
    payload = common_pb2.Payload(header=header, end_of_stream=msg.end_of_stream)
    for name, tensor in msg.tensors.items():
        payload.tensors[name].CopyFrom(tensor_to_proto(tensor))
    for name, blob in msg.blobs.items():
        payload.blobs[name] = blob
    return payload


def message_from_payload(payload: common_pb2.Payload) -> Message:
    h = payload.header
    return Message(
        kind=h.kind,
        round=h.round,
        batch=h.batch,
        sender=h.sender,
        tensors={k: tensor_from_proto(v) for k, v in payload.tensors.items()},
        blobs=dict(payload.blobs),
        end_of_stream=payload.end_of_stream,
        checkpoint=h.checkpoint,
    )


def participant_to_proto(p: Participant) -> coordinator_pb2.ParticipantInfo:
    return participant_info(p, _ROLE_TO_PB.get(p.role, common_pb2.ROLE_UNSPECIFIED))


def participant_from_proto(p: coordinator_pb2.ParticipantInfo) -> Participant:
    return Participant(role=_ROLE_FROM_PB.get(p.role, ""), **participant_fields(p))


def command_from_proto(cmd: coordinator_pb2.PhaseCommand) -> Command:
    return Command(
        phase=phase_name(cmd.phase),
        round=cmd.round,
        reason=cmd.reason,
        participants=tuple(participant_from_proto(p) for p in cmd.participants),
        resume_round=cmd.resume_round,
        resume_batch=cmd.resume_batch,
        deadline_unix_ms=cmd.deadline_unix_ms,
        attempt=cmd.attempt,
    )


def report_to_proto(
    task_id: str, node_id: str, r: Report, incarnation: str = ""
) -> coordinator_pb2.ReportPhaseRequest:
    return coordinator_pb2.ReportPhaseRequest(
        task_id=task_id,
        node_id=node_id,
        phase=common_pb2.Phase.Value(f"PHASE_{r.phase}"),
        incarnation=incarnation,
        **report_fields(r),
    )
