"""The Coordinator gRPC servicer: translate, delegate to the lifecycle, map errors.

No task rules live here: each method asks `services.authz` who may call it, converts the
request with `services.serde`, calls the state machine and turns a `CoordinatorError` into a
gRPC status with its message. The unary methods run in the server's worker threads;
`WatchTask` is a coroutine on its event loop, so open watches hold no thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from heteronn.v1 import coordinator_pb2, coordinator_pb2_grpc
from services import serde
from services.authz import Caller, CallerPolicy, open_policy, visible
from services.broadcast import CommandHub, WatchSlots
from services.errors import CoordinatorError, InvalidRequest
from services.lifecycle import Lifecycle
from wire import limits
from wire.limits import one_line, shown
from wire.status_error import status_call

log = logging.getLogger("heteronn.coordinator.rpc")
T = TypeVar("T")

#: A watcher re-checks that its task still exists at least this often (seconds).
WATCH_RECHECK_S = 5.0


def _call(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    return status_call(context, fn, log)


def paginate(
    tasks: list[coordinator_pb2.TaskInfo], page_size: int, page_token: str
) -> tuple[list[coordinator_pb2.TaskInfo], str]:
    """One page of `tasks` from the offset in `page_token`, and the next page's token. A page
    holds at most `page_size` tasks (bounded by MAX_PAGE_SIZE) and ends before it passes
    MAX_PAGE_BYTES (but holds at least one task)."""
    size = limits.DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, limits.MAX_PAGE_SIZE)
    start = 0 if not page_token else -1
    if page_token.isdigit() and len(page_token) < 12:
        start = int(page_token)
    if start < 0 or start > len(tasks):
        raise InvalidRequest(
            "ListTasks: page_token is not one this coordinator gave out; pass a response's "
            "next_page_token, or none for the first page"
        )
    page: list[coordinator_pb2.TaskInfo] = []
    used = 0
    for task in tasks[start : start + size]:
        used += task.ByteSize()
        if page and used > limits.MAX_PAGE_BYTES:
            break
        page.append(task)
    end = start + len(page)
    return page, (str(end) if end < len(tasks) else "")


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        lifecycle: Lifecycle,
        hub: CommandHub,
        policy: CallerPolicy | None = None,
        watches: WatchSlots | None = None,
    ):
        self._lifecycle = lifecycle
        self._hub = hub
        self._policy = policy or open_policy()
        self._watches = watches or WatchSlots(limits.MAX_WATCHES_PER_NODE, limits.MAX_WATCHES)

    @property
    def active_watchers(self) -> int:
        """Open WatchTask streams."""
        return self._watches.active

    def _caller(self, context: grpc.ServicerContext) -> Caller:
        return self._policy.caller(context)

    def CreateTask(self, request, context):
        def create():
            self._policy.require_operator(self._caller(context), "CreateTask")
            return self._lifecycle.create_task(serde.spec_from_proto(request.spec))

        task = _call(context, create)
        return coordinator_pb2.CreateTaskResponse(task=serde.task_to_proto(task))

    def GetTask(self, request, context):
        def get():
            caller = self._caller(context)
            return self._policy.require_reader(
                caller, "GetTask", request.task_id, self._lifecycle.find
            )

        task = _call(context, get)
        return coordinator_pb2.GetTaskResponse(task=serde.task_to_proto(task))

    def ListTasks(self, request, context):
        def page():
            caller = self._caller(context)
            tasks = visible(caller, self._lifecycle.list_tasks())[::-1]  # newest first
            protos = [serde.task_to_proto(t) for t in tasks]
            return paginate(protos, request.page_size, request.page_token)

        tasks, token = _call(context, page)
        return coordinator_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    def CancelTask(self, request, context):
        def cancel():
            self._policy.require_operator(self._caller(context), "CancelTask")
            return self._lifecycle.cancel_task(request.task_id, request.reason)

        task = _call(context, cancel)
        return coordinator_pb2.CancelTaskResponse(task=serde.task_to_proto(task))

    def DeleteTask(self, request, context):
        def delete():
            self._policy.require_operator(self._caller(context), "DeleteTask")
            return self._lifecycle.delete_task(request.task_id)

        task = _call(context, delete)
        return coordinator_pb2.DeleteTaskResponse(task=serde.task_to_proto(task))

    def JoinTask(self, request, context):
        def join():
            self._policy.require_node(self._caller(context), "JoinTask", request.node.node_id)
            node = serde.join_from_proto(request)
            return self._lifecycle.join(request.task_id, node, recover=request.recover)

        task = _call(context, join)
        return coordinator_pb2.JoinTaskResponse(task=serde.task_to_proto(task))

    def ReportPhase(self, request, context):
        def report():
            self._policy.require_node(self._caller(context), "ReportPhase", request.node_id)
            self._lifecycle.report(serde.report_from_proto(request))

        _call(context, report)
        return coordinator_pb2.ReportPhaseResponse()

    def Heartbeat(self, request, context):
        def beat():
            self._policy.require_node(self._caller(context), "Heartbeat", request.node_id)
            self._lifecycle.heartbeat(request.task_id, request.node_id)

        _call(context, beat)
        return coordinator_pb2.HeartbeatResponse()

    async def WatchTask(
        self, request: coordinator_pb2.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coordinator_pb2.WatchTaskResponse]:
        """Current command first (replay), then each new one; ends after a terminal one."""
        tid, nid = request.task_id, request.node_id
        try:
            caller = self._caller(context)
            if nid:
                self._policy.require_node(caller, "WatchTask", nid)
            else:  # an anonymous watcher only reads: operators and participants
                self._policy.require_reader(caller, "WatchTask", tid, self._lifecycle.find)
            await asyncio.to_thread(self._lifecycle.check_watch, tid, nid)
            key = (tid, f"node '{nid}'" if nid else f"reader '{caller.shown}'")
            self._watches.acquire(key)
        except CoordinatorError as err:
            log.info("%s: %s", err.code, one_line(err.message))
            await context.abort(grpc.StatusCode[err.code], err.message)
            return
        log.info("task %s: %s watching", tid, key[1])
        try:
            seq = -1
            while True:
                entry = await self._hub.wait_newer(tid, seq, timeout=WATCH_RECHECK_S)
                if entry is None:
                    if self._hub.closed or self._hub.current(tid) is None:
                        return  # shutting down, or the task was deleted
                    continue
                seq, command = entry
                yield coordinator_pb2.WatchTaskResponse(command=serde.command_to_proto(command))
                if command.phase.terminal:
                    return
        finally:
            self._watches.release(key)
            log.debug("task %s: %s stopped watching", tid, shown(key[1]))
