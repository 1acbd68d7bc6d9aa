"""The one typed client of the coordinator: what the `heteronn task` CLI, the demo, the party
nodes and the tests call instead of building stubs and requests by hand.

Methods take and return the wire records (`TaskSpec`, `TaskInfo`, `PhaseCommand`, ...), with
the request/response envelopes of `CoordinatorService` unwrapped. gRPC errors propagate as
`grpc.RpcError`: callers decide what a status code means to them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

from heteronn.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from wire.grpc_factory import open_channel
from wire.tls import TlsSettings

TaskSpec = coordinator_pb2.TaskSpec
TaskInfo = coordinator_pb2.TaskInfo
PhaseCommand = coordinator_pb2.PhaseCommand
ParticipantInfo = coordinator_pb2.ParticipantInfo

#: Default deadline of one unary call, seconds.
DEFAULT_TIMEOUT_S = 10.0


def task_spec(
    task_id: str,
    participants: Sequence[str],
    *,
    schedule_timeout_s: float = 60.0,
    calculation_timeout_s: float = 300.0,
    recover: bool = False,
    mode: str = "plain",
) -> coordinator_pb2.TaskSpec:
    """A TaskSpec with the CLI's defaults."""
    return coordinator_pb2.TaskSpec(
        task_id=task_id,
        participants=list(participants),
        schedule_timeout_s=schedule_timeout_s,
        calculation_timeout_s=calculation_timeout_s,
        recover=recover,
        mode=mode,
    )


class CoordinatorClient:
    """One channel to one coordinator. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        address: str,
        tls: TlsSettings | None = None,
        *,
        server_name: str | None = "coordinator",
        interceptors: Sequence[Any] = (),
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(address, tls, interceptors, server_name=server_name)
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)

    def wait_ready(self, timeout: float) -> None:
        """Block until the coordinator accepts connections (grpc.FutureTimeoutError after
        `timeout` seconds): for a caller started alongside it."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    # ---- operators ---------------------------------------------------------------------------
    def create_task(self, spec: coordinator_pb2.TaskSpec, timeout: float | None = None) -> TaskInfo:
        request = coordinator_pb2.CreateTaskRequest(spec=spec)
        return self.stub.CreateTask(request, timeout=timeout or self.timeout).task

    def get_task(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        request = coordinator_pb2.GetTaskRequest(task_id=task_id)
        return self.stub.GetTask(request, timeout=timeout or self.timeout).task

    def list_tasks_page(
        self, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> coordinator_pb2.ListTasksResponse:
        request = coordinator_pb2.ListTasksRequest(page_size=page_size, page_token=page_token)
        return self.stub.ListTasks(request, timeout=timeout or self.timeout)

    def list_tasks(self, limit: int | None = None, timeout: float | None = None) -> list[TaskInfo]:
        """Every task the caller may read (newest first), following the pages."""
        tasks: list[TaskInfo] = []
        token = ""
        while True:
            page = self.list_tasks_page(page_token=token, timeout=timeout)
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token or (limit is not None and len(tasks) >= limit):
                return tasks[:limit] if limit is not None else tasks

    def cancel_task(self, task_id: str, reason: str = "", timeout: float | None = None) -> TaskInfo:
        request = coordinator_pb2.CancelTaskRequest(task_id=task_id, reason=reason)
        return self.stub.CancelTask(request, timeout=timeout or self.timeout).task

    def delete_task(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Forget an ended task (FAILED_PRECONDITION while it runs: cancel it first)."""
        request = coordinator_pb2.DeleteTaskRequest(task_id=task_id)
        return self.stub.DeleteTask(request, timeout=timeout or self.timeout).task

    def watch(self, task_id: str, node_id: str = "") -> WatchStream:
        """The task's phase commands as they come (the current one first). Iterate it;
        `cancel()` ends it from another thread."""
        request = coordinator_pb2.WatchTaskRequest(task_id=task_id, node_id=node_id)
        return WatchStream(self.stub.WatchTask(request))

    # ---- party nodes -------------------------------------------------------------------------
    def join(
        self,
        task_id: str,
        node: coordinator_pb2.ParticipantInfo,
        *,
        schedule_timeout_s: float = 0.0,
        calculation_timeout_s: float = 0.0,
        agreement: Mapping[str, str] | None = None,
        incarnation: str = "",
        recover: bool = False,
        timeout: float | None = None,
    ) -> TaskInfo:
        request = coordinator_pb2.JoinTaskRequest(
            task_id=task_id,
            node=node,
            schedule_timeout_s=schedule_timeout_s,
            calculation_timeout_s=calculation_timeout_s,
            agreement=dict(agreement or {}),
            incarnation=incarnation,
            recover=recover,
        )
        return self.stub.JoinTask(request, timeout=timeout or self.timeout).task

    def report(
        self, report: coordinator_pb2.ReportPhaseRequest, timeout: float | None = None
    ) -> None:
        self.stub.ReportPhase(report, timeout=timeout or self.timeout)

    def heartbeat(self, task_id: str, node_id: str, timeout: float | None = None) -> None:
        request = coordinator_pb2.HeartbeatRequest(task_id=task_id, node_id=node_id)
        self.stub.Heartbeat(request, timeout=timeout or self.timeout)

    # ---- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WatchStream:
    """A WatchTask call as an iterator of PhaseCommand."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[coordinator_pb2.PhaseCommand]:
        for response in self._call:
            yield response.command

    def cancel(self) -> None:
        self._call.cancel()


def phase_name(phase: int) -> str:
    """'TRAIN' for PHASE_TRAIN: the name the runtime and the docs use."""
    return common_pb2.Phase.Name(phase).removeprefix("PHASE_")


__all__ = [
    "CoordinatorClient",
    "ParticipantInfo",
    "PhaseCommand",
    "TaskInfo",
    "TaskSpec",
    "WatchStream",
    "phase_name",
    "task_spec",
]
