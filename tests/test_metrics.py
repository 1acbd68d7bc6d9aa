"""Metrics interceptors over a real gRPC server on loopback, read back through the real
/metrics HTTP endpoint (what Prometheus scrapes)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from wire.grpc_factory import open_channel, start_server
from wire.metrics import Metrics, RpcMetrics, serve_metrics

Req = health_pb2.HealthCheckRequest
Resp = health_pb2.HealthCheckResponse
SERVICE = "test.Echo"


def _echo_handlers() -> grpc.GenericRpcHandler:
    """One method of each handler kind, using health messages so no extra proto is needed."""

    def unary(request: Req, context: grpc.ServicerContext) -> Resp:
        if request.service == "fail":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "asked to fail")
        return Resp(status=Resp.SERVING)

    def client_stream(requests: Iterator[Req], context: grpc.ServicerContext) -> Resp:
        return Resp(status=Resp.SERVING if sum(1 for _ in requests) else Resp.UNKNOWN)

    def server_stream(request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        for _ in range(3):
            yield Resp(status=Resp.SERVING)

    def bidi(requests: Iterator[Req], context: grpc.ServicerContext) -> Iterator[Resp]:
        for request in requests:
            if request.service == "fail":
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")
            yield Resp(status=Resp.NOT_SERVING)

    kw = {"request_deserializer": Req.FromString, "response_serializer": Resp.SerializeToString}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, **kw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **kw),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **kw),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **kw),
        },
    )


@pytest.fixture
def setup():
    server_metrics = Metrics(CollectorRegistry(), node_id="host", role="host")
    client_metrics = Metrics(CollectorRegistry(), node_id="bank", role="collaborator")

    def register(server: grpc.Server) -> list[str]:
        server.add_generic_rpc_handlers((_echo_handlers(),))
        return [SERVICE]

    server = start_server(
        "127.0.0.1:0", register, interceptors=[server_metrics.server_interceptor()]
    )
    endpoint = serve_metrics(0, server_metrics.registry, addr="127.0.0.1")
    channel = open_channel(
        f"127.0.0.1:{server.port}", interceptors=[client_metrics.client_interceptor()]
    )
    yield server, channel, endpoint, client_metrics
    channel.close()
    endpoint.close()
    server.stop(0)


def _call(channel: grpc.Channel, kind: str):
    ser, de = Req.SerializeToString, Resp.FromString
    path = f"/{SERVICE}/{kind}"
    return {
        "Unary": channel.unary_unary,
        "ClientStream": channel.stream_unary,
        "ServerStream": channel.unary_stream,
        "Bidi": channel.stream_stream,
    }[kind](path, request_serializer=ser, response_deserializer=de)


def _scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Samples of the real endpoint, keyed by (sample name, labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_all_four_handler_kinds_record_latency_code_and_bytes(setup):
    _server, channel, endpoint, _ = setup
    request = Req(service="x" * 10)  # 12 bytes serialized
    assert _call(channel, "Unary")(request, timeout=5).status == Resp.SERVING
    assert _call(channel, "ClientStream")(iter([request, request]), timeout=5)
    assert len(list(_call(channel, "ServerStream")(request, timeout=5))) == 3
    assert len(list(_call(channel, "Bidi")(iter([request] * 4), timeout=5))) == 4

    samples = _scrape(endpoint.port)
    req_bytes, resp_bytes = request.ByteSize(), Resp(status=Resp.SERVING).ByteSize()
    expected = {  # method: (requests, responses)
        "Unary": (1, 1),
        "ClientStream": (2, 1),
        "ServerStream": (1, 3),
        "Bidi": (4, 4),
    }
    for kind, (n_req, n_resp) in expected.items():
        method = f"{SERVICE}/{kind}"
        received = _value(
            samples, "heteronn_rpc_received_bytes_total", method=method, side="server"
        )
        assert received == n_req * req_bytes, kind
        sent = _value(samples, "heteronn_rpc_sent_bytes_total", method=method, side="server")
        # NOT_SERVING (Bidi) encodes to the same 2 bytes as SERVING
        assert sent == n_resp * resp_bytes, kind
        count = _value(
            samples, "heteronn_rpc_duration_seconds_count", method=method, code="OK", side="server"
        )
        assert count == 1, kind
    assert _value(samples, "heteronn_process_info", node_id="host", role="host") == 1


def test_error_codes_are_labelled(setup):
    _server, channel, endpoint, _ = setup
    with pytest.raises(grpc.RpcError) as unary_error:
        _call(channel, "Unary")(Req(service="fail"), timeout=5)
    assert unary_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as bidi_error:
        list(_call(channel, "Bidi")(iter([Req(service="fail")]), timeout=5))
    assert bidi_error.value.code() == grpc.StatusCode.PERMISSION_DENIED

    samples = _scrape(endpoint.port)
    label = {"side": "server"}
    assert (
        _value(
            samples,
            "heteronn_rpc_duration_seconds_count",
            method=f"{SERVICE}/Unary",
            code="INVALID_ARGUMENT",
            **label,
        )
        == 1
    )
    assert (
        _value(
            samples,
            "heteronn_rpc_duration_seconds_count",
            method=f"{SERVICE}/Bidi",
            code="PERMISSION_DENIED",
            **label,
        )
        == 1
    )
    assert (
        _value(
            samples,
            "heteronn_rpc_duration_seconds_count",
            method=f"{SERVICE}/Unary",
            code="OK",
            **label,
        )
        == 0
    )


def test_client_interceptor_counts_its_side(setup):
    _server, channel, _, client_metrics = setup
    request = Req(service="abc")
    _call(channel, "Unary")(request, timeout=5)
    list(_call(channel, "ServerStream")(request, timeout=5))
    with pytest.raises(grpc.RpcError):
        _call(channel, "Unary")(Req(service="fail"), timeout=5)
    # the health service the factory registers goes through the same interceptor
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    endpoint = serve_metrics(0, client_metrics.registry, addr="127.0.0.1")
    try:
        samples = _scrape(endpoint.port)
    finally:
        endpoint.close()
    unary, stream = f"{SERVICE}/Unary", f"{SERVICE}/ServerStream"
    assert _value(samples, "heteronn_rpc_sent_bytes_total", method=unary, side="client") == (
        request.ByteSize() + Req(service="fail").ByteSize()
    )
    assert _value(samples, "heteronn_rpc_received_bytes_total", method=stream, side="client") == (
        3 * Resp(status=Resp.SERVING).ByteSize()
    )
    assert (
        _value(
            samples,
            "heteronn_rpc_duration_seconds_count",
            method=unary,
            code="INVALID_ARGUMENT",
            side="client",
        )
        == 1
    )
    assert (
        _value(
            samples, "heteronn_rpc_duration_seconds_count", method=stream, code="OK", side="client"
        )
        == 1
    )
    assert (
        _value(
            samples,
            "heteronn_rpc_duration_seconds_count",
            method="grpc.health.v1.Health/Check",
            code="OK",
            side="client",
        )
        == 1
    )


def test_domain_metrics_use_prometheus_names():
    metrics = Metrics(CollectorRegistry())
    metrics.set_phase("t1", "PHASE_TRAIN", round_=3)
    metrics.set_phase("t1", "TEST")
    metrics.observe_batch("t1", rows=128)
    metrics.observe_batch("t1", rows=64)
    metrics.observe_test("t1", accuracy=0.91, loss=0.3)
    metrics.observe_psi("t1", seconds=1.5, local=1000, peer=900, intersection=800)
    with metrics.time_he("encrypt"):
        pass
    metrics.failures.labels(reason="deadline").inc()
    endpoint = serve_metrics(0, metrics.registry, addr="127.0.0.1")
    try:
        samples = _scrape(endpoint.port)
    finally:
        endpoint.close()
    assert _value(samples, "heteronn_task_phase", task_id="t1", phase="TEST") == 1
    assert _value(samples, "heteronn_task_phase", task_id="t1", phase="TRAIN") == 0
    assert _value(samples, "heteronn_task_round", task_id="t1") == 3
    assert _value(samples, "heteronn_batches_total", task_id="t1", stage="train") == 2
    assert _value(samples, "heteronn_samples_total", task_id="t1", stage="train") == 192
    assert _value(samples, "heteronn_last_test_accuracy_ratio", task_id="t1") == 0.91
    assert _value(samples, "heteronn_psi_set_size", task_id="t1", which="intersection") == 800
    assert _value(samples, "heteronn_he_operation_duration_seconds_count", op="encrypt") == 1
    assert _value(samples, "heteronn_failures_total", reason="deadline") == 1


def test_two_registries_do_not_collide():
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.failures.labels(reason="x").inc()
    assert b.registry.get_sample_value("heteronn_failures_total", {"reason": "x"}) is None
    assert a.registry.get_sample_value("heteronn_failures_total", {"reason": "x"}) == 1


def test_rpc_metrics_fit_beside_the_coordinator_gauges():
    """The coordinator exports its own task gauges; RPC metrics must not collide with them."""
    from services.metrics import CoordinatorMetrics

    registry = CollectorRegistry()
    CoordinatorMetrics(registry)
    rpc = RpcMetrics(registry, node_id="coordinator", role="coordinator")
    assert isinstance(rpc.server_interceptor(), grpc.ServerInterceptor)
    with pytest.raises(ValueError):  # while a node's full set would duplicate them
        Metrics(registry)
