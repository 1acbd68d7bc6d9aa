"""Prometheus metrics of the coordinator, registered on an injected registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.domain import Phase, Task

_PHASES = [p for p in Phase if p != Phase.UNSPECIFIED]


class CoordinatorMetrics:
    """Implements `services.lifecycle.Observer`."""

    def __init__(self, registry: CollectorRegistry):
        self.phase = Gauge(
            "heteronn_task_phase", "1 for the task's current phase, 0 for the others",
            ["task_id", "phase"], registry=registry,
        )
        self.round = Gauge(
            "heteronn_task_round", "Current training round of the task", ["task_id"],
            registry=registry,
        )
        self.failures = Counter(
            "heteronn_task_failures", "Tasks that FAILED, by short reason "
            "(join_timeout, heartbeat_lost, phase_timeout, node_error, cancelled, "
            "split_mismatch, invalid_join)",
            ["reason"], registry=registry,
        )
        self.nodes = Gauge(
            "heteronn_nodes_connected", "Nodes joined to the task (0 once it ended)",
            ["task_id"], registry=registry,
        )

    def task_changed(self, task: Task) -> None:
        tid = task.task_id
        for p in _PHASES:
            self.phase.labels(task_id=tid, phase=p.name).set(1 if p == task.phase else 0)
        self.round.labels(task_id=tid).set(task.round)
        joined = 0 if task.phase.terminal else sum(p.joined for p in task.participants.values())
        self.nodes.labels(task_id=tid).set(joined)

    def task_deleted(self, task: Task) -> None:
        """A deleted task leaves no series behind (its id is free again)."""
        tid = task.task_id
        for p in _PHASES:
            self.phase.remove(tid, p.name)
        self.round.remove(tid)
        self.nodes.remove(tid)

    def task_failed(self, task: Task) -> None:
        self.failures.labels(reason=task.failure_kind or "other").inc()
