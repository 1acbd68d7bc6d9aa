"""Prometheus metrics of a serving node (`heteronn serve`): prediction latency, the batches
the dynamic batcher forms, ids answered, and refused or failed calls by reason."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from wire.metrics import RpcMetrics

#: One id on loopback (~1 ms) up to a secure forward of a large batch (~10 s).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.08, 0.1, 0.25, 0.5, 1, 2.5,
    5, 10,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class ServingMetrics(RpcMetrics):
    def __init__(self, registry: CollectorRegistry, node_id: str = "", role: str = "") -> None:
        super().__init__(registry, node_id, role)
        r = registry
        self.latency = Histogram(
            "heteronn_prediction_latency_seconds",
            "Time to answer a serving call that succeeded (Predict at the host; Embed or "
            "SecureForward at a collaborator).",
            ["rpc"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_ids = Histogram(
            "heteronn_prediction_batch_ids",
            "Distinct ids per batch the host's dynamic batcher ran (or per collaborator call).",
            ["rpc"], buckets=_BATCH_BUCKETS, registry=r,
        )
        self.ids = Counter(
            "heteronn_predicted_ids",
            "Ids answered, by rpc and status (ok, not_found).", ["rpc", "status"], registry=r,
        )
        self.errors = Counter(
            "heteronn_prediction_errors",
            "Serving calls refused or failed, by rpc and reason (deadline, "
            "collaborator_unavailable, rate_limited, overloaded, invalid, hook_failed, ...).",
            ["rpc", "reason"], registry=r,
        )

    def answered(self, rpc: str, seconds: float, ok: int, not_found: int) -> None:
        self.latency.labels(rpc=rpc).observe(seconds)
        if ok:
            self.ids.labels(rpc=rpc, status="ok").inc(ok)
        if not_found:
            self.ids.labels(rpc=rpc, status="not_found").inc(not_found)

    def failed(self, rpc: str, reason: str) -> None:
        self.errors.labels(rpc=rpc, reason=reason).inc()
