"""The Coordinator gRPC servicer: translate, delegate to the lifecycle, map errors.

No task rules live here: each method checks who may call it (`services.authz`), converts
the request with `services.serde`, calls the state machine and turns a `CoordinatorError`
into a gRPC status with its message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from heteronn.v1 import coordinator_pb2, coordinator_pb2_grpc
from services import serde
from services.authz import CallerPolicy, open_policy, visible
from services.broadcast import CommandHub
from services.errors import InvalidRequest
from services.lifecycle import Lifecycle
from wire.status_error import status_call

log = logging.getLogger("heteronn.coordinator.rpc")
T = TypeVar("T")

#: ListTasks page sizes: when the caller gives none, and the most it may ask for.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: A watcher re-checks that its client is still there at least this often (seconds).
WATCH_RECHECK_S = 5.0


def _call(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    return status_call(context, fn, log)


def paginate(tasks: list[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    """One page of `tasks` from the offset in `page_token`, and the next page's token."""
    size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    try:
        start = int(page_token or 0)
    except ValueError:
        start = -1
    if start < 0:
        raise InvalidRequest(
            "ListTasks: page_token is not one this coordinator gave out; pass a response's "
            "next_page_token, or none for the first page"
        )
    end = start + size
    return tasks[start:end], (str(end) if end < len(tasks) else "")


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, lifecycle: Lifecycle, hub: CommandHub, policy: CallerPolicy | None = None):
        self._lifecycle = lifecycle
        self._hub = hub
        self._policy = policy or open_policy()
        self._watchers = 0
        self._watchers_lock = threading.Lock()

    @property
    def active_watchers(self) -> int:
        """Open WatchTask streams (each holds a server thread)."""
        with self._watchers_lock:
            return self._watchers

    def CreateTask(self, request, context):
        self._policy.require_operator(context, "CreateTask")
        spec = serde.spec_from_proto(request.spec)
        task = _call(context, lambda: self._lifecycle.create_task(spec))
        return coordinator_pb2.CreateTaskResponse(task=serde.task_to_proto(task))

    def GetTask(self, request, context):
        task = _call(context, lambda: self._lifecycle.get_task(request.task_id))
        self._policy.require_reader(context, "GetTask", task)
        return coordinator_pb2.GetTaskResponse(task=serde.task_to_proto(task))

    def ListTasks(self, request, context):
        caller = self._policy.caller(context)
        tasks = visible(caller, self._lifecycle.list_tasks())[::-1]  # newest first
        page, token = _call(context, lambda: paginate(tasks, request.page_size, request.page_token))
        return coordinator_pb2.ListTasksResponse(
            tasks=[serde.task_to_proto(t) for t in page], next_page_token=token
        )

    def CancelTask(self, request, context):
        self._policy.require_operator(context, "CancelTask")
        task = _call(context, lambda: self._lifecycle.cancel_task(request.task_id, request.reason))
        return coordinator_pb2.CancelTaskResponse(task=serde.task_to_proto(task))

    def JoinTask(self, request, context):
        self._policy.require_node(context, "JoinTask", request.node.node_id)
        node = serde.join_from_proto(request)
        task = _call(
            context, lambda: self._lifecycle.join(request.task_id, node, recover=request.recover)
        )
        return coordinator_pb2.JoinTaskResponse(task=serde.task_to_proto(task))

    def ReportPhase(self, request, context):
        self._policy.require_node(context, "ReportPhase", request.node_id)
        report = serde.report_from_proto(request)
        _call(context, lambda: self._lifecycle.report(report))
        return coordinator_pb2.ReportPhaseResponse()

    def Heartbeat(self, request, context):
        self._policy.require_node(context, "Heartbeat", request.node_id)
        _call(context, lambda: self._lifecycle.heartbeat(request.task_id, request.node_id))
        return coordinator_pb2.HeartbeatResponse()

    def WatchTask(
        self, request: coordinator_pb2.WatchTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[coordinator_pb2.WatchTaskResponse]:
        """Current command first (replay), then each new one; ends after a terminal one."""
        if request.node_id:
            self._policy.require_node(context, "WatchTask", request.node_id)
        else:  # an anonymous watcher only reads: operators and participants
            task = _call(context, lambda: self._lifecycle.get_task(request.task_id))
            self._policy.require_reader(context, "WatchTask", task)
        _call(context, lambda: self._lifecycle.check_watch(request.task_id, request.node_id))
        gone = threading.Event()

        def on_done() -> None:
            gone.set()
            self._hub.wake()

        context.add_callback(on_done)
        log.info("task %s: node %r watching", request.task_id, request.node_id)
        with self._watchers_lock:
            self._watchers += 1
        try:
            yield from self._stream(request.task_id, gone, context)
        finally:
            with self._watchers_lock:
                self._watchers -= 1

    def _stream(
        self, task_id: str, gone: threading.Event, context: grpc.ServicerContext
    ) -> Iterator[coordinator_pb2.WatchTaskResponse]:
        seq = -1
        while not gone.is_set() and context.is_active():
            entry = self._hub.wait_newer(
                task_id, seq, active=lambda: not gone.is_set(), timeout=WATCH_RECHECK_S
            )
            if entry is None:
                if self._hub.closed:
                    return
                continue
            seq, command = entry
            yield coordinator_pb2.WatchTaskResponse(command=serde.command_to_proto(command))
            if command.phase.terminal:
                return
