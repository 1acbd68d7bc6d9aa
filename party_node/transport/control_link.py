"""The runtime's ControlLink over gRPC, on the typed coordinator client: join (retrying while
the coordinator or the task is not there yet), a watch thread that queues phase commands and
raises the abort signal on a failure broadcast, and a heartbeat thread."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid

import grpc

from party_node.errors import TaskFailed
from party_node.runtime.links import AbortSignal, Command, JoinInfo, Participant, Report
from party_node.transport.serde import (
    command_from_proto,
    participant_from_proto,
    participant_to_proto,
    report_to_proto,
)
from services.client import CoordinatorClient, WatchStream
from wire.tls import TlsSettings

log = logging.getLogger("heteronn")
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
HEARTBEAT_S = 1.0
#: How long a failing node keeps trying to tell the coordinator before it exits anyway.
ERROR_REPORT_PATIENCE_S = 5.0


class CoordinatorLink:
    def __init__(
        self, address: str, task_id: str, node_id: str, tls: TlsSettings | None, abort: AbortSignal
    ):
        self.address = address
        self.task_id = task_id
        self.node_id = node_id
        self.abort = abort
        self._client = CoordinatorClient(address, tls)
        self._commands: queue.Queue[Command] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._patience = 30.0
        self._watch_call: WatchStream | None = None
        #: This process's identity at the coordinator: a later process of this node (a
        #: restart) has another, and this one's reports are then ignored.
        self.incarnation = uuid.uuid4().hex
        #: The attempt of the task this node joined; a later attempt ends this run.
        self.attempt = 0

    # ---- join -----------------------------------------------------------------------------------
    def join(self, info: JoinInfo) -> tuple[Participant, ...]:
        self._patience = info.schedule_timeout
        deadline = time.monotonic() + info.schedule_timeout
        node = participant_to_proto(
            Participant(
                info.node_id,
                info.role,
                info.feature_key,
                info.address,
                info.checkpoint_round,
                info.checkpoint_batch,
            )
        )
        while True:
            try:
                task = self._client.join(
                    self.task_id,
                    node,
                    schedule_timeout_s=info.schedule_timeout,
                    calculation_timeout_s=info.calculation_timeout,
                    agreement=info.agreement,
                    incarnation=self.incarnation,
                    recover=info.recover,
                )
                break
            except grpc.RpcError as exc:
                if exc.code() in _RETRYABLE and time.monotonic() < deadline:
                    time.sleep(0.3)
                    continue
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    raise TaskFailed(
                        f"cannot reach the coordinator at {self.address} within "
                        f"schedule_timeout={info.schedule_timeout:g} s; check the address and that "
                        "it is running"
                    ) from None
                raise TaskFailed(
                    f"the coordinator refused node '{self.node_id}': {exc.details()}"
                ) from None
        for target, name in ((self._watch, "watch"), (self._heartbeat, "heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.attempt = task.attempt
        return tuple(participant_from_proto(p) for p in task.participants)

    # ---- commands -------------------------------------------------------------------------------
    def _watch(self) -> None:
        last_contact = time.monotonic()
        while not self._stop.is_set():
            try:
                self._watch_call = self._client.watch(self.task_id, self.node_id)
                for pb in self._watch_call:
                    last_contact = time.monotonic()
                    cmd = command_from_proto(pb)
                    if cmd.attempt and self.attempt and cmd.attempt != self.attempt:
                        cmd = self._superseded(cmd)
                    if cmd.phase == "FAILED":
                        self.abort.set(cmd.reason)
                    self._commands.put(cmd)
                    if cmd.phase in ("FINISHED", "FAILED"):
                        return
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if time.monotonic() - last_contact > self._patience:
                    reason = (
                        f"node '{self.node_id}' lost contact with the coordinator at "
                        f"{self.address} "
                        f"for {self._patience:g} s ({exc.code().name}); the task cannot continue"
                    )
                    self.abort.set(reason)
                    self._commands.put(Command(phase="FAILED", reason=reason))
                    return
            self._stop.wait(0.5)

    def _superseded(self, cmd: Command) -> Command:
        """A command of another attempt: this node's attempt ended (interrupted, because a
        party restarted with recover=True); this process stops."""
        why = f": {cmd.reason}" if cmd.reason else ""
        return Command(
            phase="FAILED",
            reason=(
                f"task '{self.task_id}' went on as attempt {cmd.attempt} without this process "
                f"of node '{self.node_id}' (attempt {self.attempt}){why}; restart this node "
                "with recover=True to take part"
            ),
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            # Errors are ignored: the watch thread decides when the coordinator is gone.
            with contextlib.suppress(grpc.RpcError):
                self._client.heartbeat(self.task_id, self.node_id, timeout=5)

    def next_command(self, timeout: float) -> Command:
        try:
            return self._commands.get(timeout=timeout)
        except queue.Empty:
            raise TaskFailed(
                f"node '{self.node_id}' received no instruction from the coordinator at "
                f"{self.address} for {timeout:g} s"
            ) from None

    def report(self, report: Report) -> None:
        """Deliver `report`; while the coordinator is unreachable (restarting), retry for up
        to schedule_timeout, the gap a node tolerates (an error report, sent on the way out,
        for at most ERROR_REPORT_PATIENCE_S)."""
        request = report_to_proto(self.task_id, self.node_id, report, self.incarnation)
        patience = min(self._patience, ERROR_REPORT_PATIENCE_S) if report.error else self._patience
        deadline = time.monotonic() + patience
        delay = 0.2
        while True:
            try:
                left = max(deadline - time.monotonic(), 1.0)
                self._client.report(request, timeout=min(left, 10.0))
                return
            except grpc.RpcError as exc:
                code = exc.code()
                retry = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if retry and time.monotonic() + delay < deadline and not self._stop.is_set():
                    time.sleep(delay)
                    delay = min(2 * delay, 2.0)
                    continue
                if report.error and code == grpc.StatusCode.FAILED_PRECONDITION:
                    return  # the task has already ended: nothing left to tell
                raise TaskFailed(
                    f"the coordinator rejected the {report.phase} report of '{self.node_id}': "
                    f"{code.name}: {exc.details()}"
                ) from None

    def close(self) -> None:
        self._stop.set()
        if self._watch_call is not None:
            self._watch_call.cancel()
        self._client.close()
