"""Prometheus metrics of a heteronn process, and the gRPC interceptors that feed them.

Names follow Prometheus conventions: `heteronn_` prefix, base units (seconds, bytes),
`_total` on counters. The registry is injected (never a module-level global) so that two
processes simulated in one interpreter, and tests, do not collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Task phases as the coordinator names them (proto `heteronn.v1.Phase` without the prefix).
PHASES = ("WAITING_FOR_NODES", "PSI", "SPLIT", "TRAIN", "TEST", "FINISHED", "FAILED")

#: RPC latency buckets: loopback health checks (~1 ms) up to a CKKS round trip (~10 s).
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: HE operations: encrypt ~8 ms, one projection ~120 ms (DESIGN.md, secure mode).
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

    def server_interceptor(self) -> MetricsServerInterceptor:
        return MetricsServerInterceptor(self)

    def client_interceptor(self) -> MetricsClientInterceptor:
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
        self, task_id: str, seconds: float, local: int, peer: int, intersection: int
    ) -> None:
        self.psi_duration.labels(task_id=task_id).set(seconds)
        for which, size in (("local", local), ("peer", peer), ("intersection", intersection)):
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


def _method_label(full_method: str) -> str:
    return full_method.lstrip("/")


def _size(message: Any) -> int:
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


class _Observation:
    """One RPC in flight: adds bytes as messages pass and records the latency once."""

    def __init__(self, metrics: RpcMetrics, method: str, side: str) -> None:
        self.metrics, self.method, self.side = metrics, method, side
        self.start = time.perf_counter()
        self._done = False
        self._lock = threading.Lock()

    def sent(self, message: Any) -> None:
        self.metrics.rpc_sent_bytes.labels(method=self.method, side=self.side).inc(_size(message))

    def received(self, message: Any) -> None:
        n = _size(message)
        self.metrics.rpc_received_bytes.labels(method=self.method, side=self.side).inc(n)

    def finish(self, code: grpc.StatusCode | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        name = (code or grpc.StatusCode.OK).name
        self.metrics.rpc_duration.labels(method=self.method, code=name, side=self.side).observe(
            time.perf_counter() - self.start
        )

    def counted_iter(
        self, messages: Iterator[Any], on_each: Callable[[Any], None]
    ) -> Iterator[Any]:
        for message in messages:
            on_each(message)
            yield message


def _server_code(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


class MetricsServerInterceptor(grpc.ServerInterceptor):
    """Records latency, status code and message bytes for all four handler kinds."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_label(handler_call_details.method)
        metrics = self.metrics

        def wrap_unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
                obs = _Observation(metrics, method, "server")
                if handler.request_streaming:
                    request_or_iterator = obs.counted_iter(request_or_iterator, obs.received)
                else:
                    obs.received(request_or_iterator)
                try:
                    response = behavior(request_or_iterator, context)
                except BaseException as error:
                    obs.finish(_server_code(context, error))
                    raise
                obs.sent(response)
                obs.finish(_server_code(context, None))
                return response

            return wrapped

        def wrap_stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                obs = _Observation(metrics, method, "server")
                if handler.request_streaming:
                    request_or_iterator = obs.counted_iter(request_or_iterator, obs.received)
                else:
                    obs.received(request_or_iterator)
                # The client may cancel mid-stream: the generator is then closed (GeneratorExit).
                context.add_callback(lambda: obs.finish(grpc.StatusCode.CANCELLED))
                try:
                    for response in behavior(request_or_iterator, context):
                        obs.sent(response)
                        yield response
                except GeneratorExit:
                    obs.finish(grpc.StatusCode.CANCELLED)
                    raise
                except BaseException as error:
                    obs.finish(_server_code(context, error))
                    raise
                obs.finish(_server_code(context, None))

            return wrapped

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(handler.unary_unary),
                handler.request_deserializer, handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary),
                handler.request_deserializer, handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream),
                handler.request_deserializer, handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream_response(handler.stream_stream),
            handler.request_deserializer, handler.response_serializer,
        )


class _CountingResponseStream:
    """A client-side response stream that counts each message and records the final status;
    every other attribute (code(), cancel(), ...) is the underlying call's."""

    def __init__(self, call: Any, obs: _Observation) -> None:
        self._call, self._obs = call, obs

    def __iter__(self) -> _CountingResponseStream:
        return self

    def __next__(self) -> Any:
        try:
            message = next(self._call)
        except StopIteration:
            self._obs.finish(grpc.StatusCode.OK)
            raise
        except grpc.RpcError as error:
            self._obs.finish(error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN)
            raise
        self._obs.received(message)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class MetricsClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Client-side twin of MetricsServerInterceptor (side="client")."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    def _start(
        self, continuation: Any, details: Any, request: Any, streaming: bool
    ) -> tuple[_Observation, Any]:
        """Count what is sent (one request or each of a stream's) and start the call."""
        obs = _Observation(self.metrics, _method_label(details.method), "client")
        if streaming:
            request = obs.counted_iter(request, obs.sent)
        else:
            obs.sent(request)
        return obs, continuation(details, request)

    def _unary_response(self, continuation: Any, details: Any, request: Any, streaming: bool):
        obs, call = self._start(continuation, details, request, streaming)

        def done(future: Any) -> None:
            code = future.code()
            if code == grpc.StatusCode.OK:
                obs.received(future.result())
            obs.finish(code)

        call.add_done_callback(done)
        return call

    def _stream_response(self, continuation: Any, details: Any, request: Any, streaming: bool):
        obs, call = self._start(continuation, details, request, streaming)
        call.add_done_callback(lambda c: obs.finish(c.code()))
        return _CountingResponseStream(call, obs)

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[override]
        return self._unary_response(continuation, client_call_details, request, False)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return self._unary_response(continuation, client_call_details, request_iterator, True)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[override]
        return self._stream_response(continuation, client_call_details, request, False)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return self._stream_response(continuation, client_call_details, request_iterator, True)
