"""Paired conversions between the coordinator's records and `heteronn.v1` messages.

The only coordinator module besides the servicer and the CLI that touches `_pb2` types.
"""

from __future__ import annotations

from heteronn.v1 import coordinator_pb2
from services.domain import Command, Participant, Phase, Report, Role, Task, TaskSpec, unix_ms
from services.errors import InvalidRequest
from wire.coordinator_records import participant_fields, participant_info, report_fields


def spec_to_proto(spec: TaskSpec) -> coordinator_pb2.TaskSpec:
    return coordinator_pb2.TaskSpec(
        task_id=spec.task_id,
        participants=list(spec.participants),
        schedule_timeout_s=spec.schedule_timeout_s,
        calculation_timeout_s=spec.calculation_timeout_s,
        recover=spec.recover,
        mode=spec.mode,
    )


def spec_from_proto(msg: coordinator_pb2.TaskSpec) -> TaskSpec:
    return TaskSpec(
        task_id=msg.task_id,
        participants=list(msg.participants),
        schedule_timeout_s=msg.schedule_timeout_s,
        calculation_timeout_s=msg.calculation_timeout_s,
        recover=msg.recover,
        mode=msg.mode or "plain",
    )


def participant_to_proto(p: Participant) -> coordinator_pb2.ParticipantInfo:
    return participant_info(p, int(p.role), joined=p.joined)


def join_from_proto(msg: coordinator_pb2.JoinTaskRequest) -> Participant:
    """The joining node as a Participant (not yet marked joined)."""
    n = msg.node
    return Participant(
        role=Role(n.role) if n.role in Role._value2member_map_ else Role.UNSPECIFIED,
        **participant_fields(n),
        schedule_timeout_s=msg.schedule_timeout_s,
        calculation_timeout_s=msg.calculation_timeout_s,
        agreement=dict(msg.agreement),
        incarnation=msg.incarnation,
    )


def task_to_proto(task: Task) -> coordinator_pb2.TaskInfo:
    return coordinator_pb2.TaskInfo(
        spec=spec_to_proto(task.spec),
        phase=int(task.phase),
        round=task.round,
        reason=task.reason,
        participants=[participant_to_proto(p) for p in task.participants.values()],
        updated_unix_ms=unix_ms(task.updated),
        metrics=dict(task.metrics),
        attempt=task.attempt,
    )


def report_from_proto(msg: coordinator_pb2.ReportPhaseRequest) -> Report:
    """The report; InvalidRequest for a phase this coordinator does not know."""
    if msg.phase not in Phase._value2member_map_ or msg.phase == Phase.UNSPECIFIED:
        raise InvalidRequest(
            f"ReportPhase: phase {msg.phase} is not a phase of heteronn.v1.Phase; report the "
            "phase the coordinator's command named"
        )
    return Report(
        task_id=msg.task_id,
        node_id=msg.node_id,
        phase=Phase(msg.phase),
        **report_fields(msg),
        incarnation=msg.incarnation,
    )


def command_to_proto(cmd: Command) -> coordinator_pb2.PhaseCommand:
    return coordinator_pb2.PhaseCommand(
        task_id=cmd.task_id,
        phase=int(cmd.phase),
        round=cmd.round,
        deadline_unix_ms=cmd.deadline_unix_ms,
        reason=cmd.reason,
        participants=[participant_to_proto(p) for p in cmd.participants],
        resume_round=cmd.resume_round,
        resume_batch=cmd.resume_batch,
        attempt=cmd.attempt,
    )
