"""Prometheus metrics of a heteronn process, and the gRPC interceptors that feed them.

Names follow Prometheus conventions: `heteronn_` prefix, base units (seconds, bytes),
`_total` on counters. The registry is injected (never a module-level global) so that two
processes simulated in one interpreter, and tests, do not collide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Task phases as the coordinator names them (proto `heteronn.v1.Phase` without the prefix).
PHASES = ("WAITING_FOR_NODES", "PSI", "SPLIT", "TRAIN", "TEST", "FINISHED", "FAILED")

#: RPC latency buckets: loopback health checks (~1 ms) up to a CKKS round trip (~10 s).
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: HE operations: encrypt ~8 ms, one projection ~120 ms (docs/secure-protocol.md).
_HE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RpcMetrics:
    """Per-RPC families (bytes, latency) and process identity: what every process exports,
    the coordinator included (its task gauges live in services.metrics)."""

    def __init__(self, registry: CollectorRegistry, node_id: str = "", role: str = "") -> None:
        self.registry = registry
        r = registry
        self.info = Gauge(
            "heteronn_process_info", "Constant 1; labels identify the process.",
            ["node_id", "role"], registry=r,
        )
        if node_id or role:
            self.info.labels(node_id=node_id, role=role).set(1)
        self.rpc_sent_bytes = Counter(
            "heteronn_rpc_sent_bytes",
            "Serialized protobuf bytes sent, by RPC method and side (client/server).",
            ["method", "side"], registry=r,
        )
        self.rpc_received_bytes = Counter(
            "heteronn_rpc_received_bytes",
            "Serialized protobuf bytes received, by RPC method and side (client/server).",
            ["method", "side"], registry=r,
        )
        self.rpc_duration = Histogram(
            "heteronn_rpc_duration_seconds",
            "RPC latency from start to final status, by method, status code and side.",
            ["method", "code", "side"], buckets=_RPC_BUCKETS, registry=r,
        )

    def server_interceptor(self) -> grpc.ServerInterceptor:
        from wire.metrics_interceptors import server_interceptor

        return server_interceptor(self)

    def aio_server_interceptor(self) -> grpc.aio.ServerInterceptor:
        from wire.metrics_interceptors import aio_server_interceptor

        return aio_server_interceptor(self)

    def client_interceptor(self) -> Any:
        from wire.metrics_interceptors import MetricsClientInterceptor

        return MetricsClientInterceptor(self)


class Metrics(RpcMetrics):
    """Every metric family of a party node, bound to one registry."""

    def __init__(self, registry: CollectorRegistry, node_id: str = "", role: str = "") -> None:
        super().__init__(registry, node_id, role)
        r = registry
        self.task_phase = Gauge(
            "heteronn_task_phase",
            "1 for the task's current phase, 0 for the others.", ["task_id", "phase"], registry=r,
        )
        self.task_round = Gauge(
            "heteronn_task_round", "Current training round (1-based; 0 before training).",
            ["task_id"], registry=r,
        )
        self.task_progress = Gauge(
            "heteronn_task_last_progress_timestamp_seconds",
            "Unix time of the task's last batch or phase change (for stall alerts).",
            ["task_id"], registry=r,
        )
        self.batches = Counter(
            "heteronn_batches", "Batches processed.", ["task_id", "stage"], registry=r,
        )
        self.samples = Counter(
            "heteronn_samples", "Samples (rows) processed.", ["task_id", "stage"], registry=r,
        )
        self.psi_duration = Gauge(
            "heteronn_psi_duration_seconds", "Wall time of the task's last PSI run.",
            ["task_id"], registry=r,
        )
        self.psi_set_size = Gauge(
            "heteronn_psi_set_size",
            "ID set sizes in PSI: which=local|peer|intersection.", ["task_id", "which"], registry=r,
        )
        self.he_duration = Histogram(
            "heteronn_he_operation_duration_seconds",
            "Duration of homomorphic-encryption operations (encrypt, decrypt, matmul, ...).",
            ["op"], buckets=_HE_BUCKETS, registry=r,
        )
        self.test_accuracy = Gauge(
            "heteronn_last_test_accuracy_ratio", "Accuracy (0..1) of the last test run.",
            ["task_id"], registry=r,
        )
        self.test_loss = Gauge(
            "heteronn_last_test_loss", "Loss of the last test run.", ["task_id"], registry=r,
        )
        self.failures = Counter(
            "heteronn_failures", "Task failures seen by this process, by reason.",
            ["reason"], registry=r,
        )
        self.label_leak = Gauge(
            "heteronn_label_leak_score",
            "The host's live label-leak metric for the last round: an attack's score on the "
            "gradients sent to a collaborator (cluster_accuracy, direction_auc, norm_auc) and "
            "its chance level (cluster_chance; 0.5 for an AUC). docs/privacy.md.",
            ["task_id", "peer", "attack"], registry=r,
        )
        self.label_leak_seconds = Gauge(
            "heteronn_label_leak_scoring_seconds",
            "Time the host spent sampling and scoring the last round's outgoing gradients.",
            ["task_id", "peer"], registry=r,
        )
        self.peers_connected = Gauge(
            "heteronn_peers_connected", "Peers this process currently holds a channel to.",
            registry=r,
        )

    # Small helpers so call sites stay one line and label sets stay consistent.
    def set_phase(self, task_id: str, phase: str, round_: int | None = None) -> None:
        """Mark `phase` current (1) and every other phase 0; optionally set the round."""
        phase = phase.removeprefix("PHASE_")
        for name in PHASES:
            self.task_phase.labels(task_id=task_id, phase=name).set(1 if name == phase else 0)
        if round_ is not None:
            self.task_round.labels(task_id=task_id).set(round_)
        self.task_progress.labels(task_id=task_id).set(time.time())

    def observe_batch(self, task_id: str, rows: int, stage: str = "train") -> None:
        """Count one batch of `rows` samples (stage: train or test)."""
        self.batches.labels(task_id=task_id, stage=stage).inc()
        self.samples.labels(task_id=task_id, stage=stage).inc(rows)
        self.task_progress.labels(task_id=task_id).set(time.time())

    def observe_test(self, task_id: str, accuracy: float | None, loss: float | None) -> None:
        if accuracy is not None:
            self.test_accuracy.labels(task_id=task_id).set(accuracy)
        if loss is not None:
            self.test_loss.labels(task_id=task_id).set(loss)

    def observe_psi(
        self, task_id: str, seconds: float, local: int, peer: int | None, intersection: int
    ) -> None:
        """PSI's duration and set sizes; `peer` None leaves the peer size as the transport
        set it."""
        self.psi_duration.labels(task_id=task_id).set(seconds)
        for which, size in (("local", local), ("peer", peer), ("intersection", intersection)):
            if size is not None:
                self.psi_set_size.labels(task_id=task_id, which=which).set(size)

    def observe_label_leak(
        self, task_id: str, peer: str, scores: dict[str, float], seconds: float
    ) -> None:
        for attack, value in scores.items():
            self.label_leak.labels(task_id=task_id, peer=peer, attack=attack).set(value)
        self.label_leak_seconds.labels(task_id=task_id, peer=peer).set(seconds)

    def time_he(self, op: str) -> Any:
        """Context manager timing one HE operation: ``with metrics.time_he("encrypt"):``."""
        return self.he_duration.labels(op=op).time()

@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP endpoint; `port` is the bound port."""

    port: int
    _server: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> MetricsEndpoint:
    """Serve `registry` at http://addr:port/metrics from a daemon thread (port 0 picks a free
    one). Prometheus scrapes it; it is plain HTTP, so bind it where only the scraper reaches."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsEndpoint(port=int(server.server_address[1]), _server=server)
