"""Fake party nodes for coordinator tests: real gRPC clients (the typed CoordinatorClient)
that join, heartbeat, watch and report the way a party node does, with the node's work left
out."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import grpc

from heteronn.v1 import common_pb2, coordinator_pb2
from services.client import CoordinatorClient, WatchStream, task_spec

P = coordinator_pb2
#: Phase numbers (heteronn.v1.Phase).
Ph = common_pb2
TERMINAL = (Ph.PHASE_FINISHED, Ph.PHASE_FAILED)


def spec(
    task_id: str, nodes: list[str], sched: float = 2.0, calc: float = 5.0, recover: bool = False
) -> coordinator_pb2.TaskSpec:
    return task_spec(
        task_id, nodes, schedule_timeout_s=sched, calculation_timeout_s=calc, recover=recover
    )


class FakeNode:
    """One node of one task talking to the coordinator at `address`."""

    def __init__(self, address: str, task_id: str, node_id: str, host: bool = False):
        self.task_id, self.node_id, self.host = task_id, node_id, host
        self.client = CoordinatorClient(address, timeout=5)
        self.stub = self.client.stub
        self.commands: queue.Queue[coordinator_pb2.PhaseCommand | None] = queue.Queue()
        self.received: list[coordinator_pb2.PhaseCommand] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_call: WatchStream | None = None

    def join(self, checkpoint_round: int = 0, **kw: Any) -> coordinator_pb2.TaskInfo:
        node = P.ParticipantInfo(
            node_id=self.node_id,
            role=common_pb2.ROLE_HOST if self.host else common_pb2.ROLE_COLLABORATOR,
            feature_key=f"fk-{self.node_id}",
            address=f"127.0.0.1:{7000 + len(self.node_id)}",
            checkpoint_round=checkpoint_round,
        )
        return self.client.join(self.task_id, node, **kw)

    def _spawn(self, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, daemon=True)
        t.start()
        self._threads.append(t)

    def watch(self) -> None:
        call = self.client.watch(self.task_id, self.node_id)
        self._watch_call = call

        def run() -> None:
            try:
                for cmd in call:
                    self.received.append(cmd)
                    self.commands.put(cmd)
            except grpc.RpcError:
                pass
            self.commands.put(None)  # stream ended

        self._spawn(run)

    def heartbeat(self, interval: float = 0.1) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.client.heartbeat(self.task_id, self.node_id, timeout=2)
                except grpc.RpcError:
                    return

        self._spawn(run)

    def report(self, phase: int, round_: int = 0, **kw: object) -> None:
        self.client.report(
            P.ReportPhaseRequest(
                task_id=self.task_id, node_id=self.node_id, phase=phase, round=round_, **kw
            )
        )

    def next_command(self, timeout: float = 10.0) -> coordinator_pb2.PhaseCommand | None:
        return self.commands.get(timeout=timeout)

    def wait_phase(self, phase: int, timeout: float = 10.0) -> coordinator_pb2.PhaseCommand:
        while True:
            cmd = self.next_command(timeout)
            assert cmd is not None, f"{self.node_id}: stream ended before {Ph.Phase.Name(phase)}"
            if cmd.phase == phase:
                return cmd

    def stop_heartbeats(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._watch_call is not None:
            self._watch_call.cancel()
        self.client.close()
        for t in self._threads:
            t.join(timeout=5)


def respond(
    node: FakeNode, finish_round: int, test_rounds: set[int], split: tuple[int, int] = (100, 20)
) -> None:
    """Answer each command the way a healthy node would until the stream ends."""
    while (cmd := node.next_command()) is not None:
        if cmd.phase == Ph.PHASE_PSI:
            node.report(Ph.PHASE_PSI)
        elif cmd.phase == Ph.PHASE_SPLIT:
            node.report(Ph.PHASE_SPLIT, train_size=split[0], test_size=split[1], split_digest="d")
        elif cmd.phase == Ph.PHASE_TRAIN:
            r = cmd.round
            extra = dict(finished=r >= finish_round, test_requested=r in test_rounds)
            node.report(Ph.PHASE_TRAIN, r, checkpoint_round=r, **(extra if node.host else {}))
        elif cmd.phase == Ph.PHASE_TEST:
            metrics = {"accuracy": 0.5 + cmd.round / 100} if node.host else {}
            node.report(Ph.PHASE_TEST, cmd.round, metrics=metrics)
