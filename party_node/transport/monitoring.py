"""The runtime's TaskObserver for a node: Prometheus (wire.metrics) and the node state that
GetStatus answers from, bound to one task."""

from __future__ import annotations

from party_node.runtime.links import TaskObserver
from party_node.transport.node_state import NodeState
from wire.metrics import Metrics


class NodeObserver(TaskObserver):
    def __init__(self, metrics: Metrics, task_id: str, state: NodeState):
        self.metrics = metrics
        self.task_id = task_id
        self.state = state

    def phase(self, phase: str, round_no: int) -> None:
        self.state.phase, self.state.round = phase, round_no
        self.metrics.set_phase(self.task_id, phase, round_no)

    def batch(self, rows: int, stage: str) -> None:
        self.metrics.observe_batch(self.task_id, rows, stage)

    def psi(self, seconds: float, local: int, intersection: int) -> None:
        self.metrics.observe_psi(self.task_id, seconds, local, None, intersection)

    def test(self, metrics: dict[str, float]) -> None:
        self.metrics.observe_test(self.task_id, metrics.get("accuracy"), metrics.get("loss"))

    def he(self, op: str, seconds: float) -> None:
        self.metrics.he_duration.labels(op=op).observe(seconds)

    def label_leak(self, peer: str, scores: dict[str, float], seconds: float) -> None:
        self.metrics.observe_label_leak(self.task_id, peer, scores, seconds)

    def failed(self, kind: str) -> None:
        self.metrics.failures.labels(reason=kind).inc()
