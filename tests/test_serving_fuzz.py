"""The bounded fuzz of tests/test_rpc_fuzz.py extended to the serving RPCs (issue 9 with issue
8's services): a real deployment of `heteronn serve` processes under mutual TLS (the host's
PredictionService, a collaborator's InferencePeerService and batch Psi); generated hostile
requests and raw bytes, as the allowed client and as an outsider, end with a documented
status code (never UNKNOWN or INTERNAL) and both servers keep serving."""

from __future__ import annotations

import grpc
from hypothesis import given
from hypothesis import strategies as st

from heteronn.v1 import serving_pb2, serving_pb2_grpc
from tests import serving_harness as sh
from tests.test_rpc_fuzz import FUZZ, _outcome
from tests.test_serving import deployment  # noqa: F401  (the module's deployment fixture)
from wire.grpc_factory import open_channel

ids = st.lists(
    st.one_of(st.sampled_from(["1", "2", "7", ""]), st.text(max_size=300)), max_size=1100
)


def _channel(deployment, node: str, cert: str) -> grpc.Channel:  # noqa: F811
    address = deployment[{"h": "host", "c1": "collab"}[node]].address
    return open_channel(address, sh.client_tls(deployment["certs"], cert), server_name=node)


@FUZZ
@given(cert=st.sampled_from(["client", "mallory"]), request_ids=ids,
       timeout=st.sampled_from([0.5, 5.0, 60.0]))
def test_predict(deployment, cert, request_ids, timeout) -> None:  # noqa: F811
    channel = _channel(deployment, "h", cert)
    try:
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        _outcome(stub.Predict, serving_pb2.PredictRequest(ids=request_ids), timeout=timeout)
        _outcome(stub.GetModel, serving_pb2.GetModelRequest(), timeout=5)
    finally:
        channel.close()


@FUZZ
@given(cert=st.sampled_from(["h", "client", "mallory"]), sender=st.sampled_from(["h", "c1", "x"]),
       model_id=st.text(max_size=80), request_ids=ids, batch_id=st.text(max_size=200))
def test_peer_calls(deployment, cert, sender, model_id, request_ids, batch_id) -> None:  # noqa: F811
    channel = _channel(deployment, "c1", cert)
    try:
        stub = serving_pb2_grpc.InferencePeerServiceStub(channel)
        _outcome(stub.DescribeModel, serving_pb2.DescribeModelRequest(sender=sender), timeout=5)
        embed = serving_pb2.EmbedRequest(model_id=model_id, sender=sender, ids=request_ids,
                                         batch_id=batch_id)
        _outcome(stub.Embed, embed, timeout=5)
    finally:
        channel.close()


SERVED = {  # what each node serves (another method is UNIMPLEMENTED, rightly)
    "h": ["/heteronn.v1.PredictionService/Predict", "/heteronn.v1.PredictionService/GetModel"],
    "c1": ["/heteronn.v1.InferencePeerService/DescribeModel",
           "/heteronn.v1.InferencePeerService/Embed"],
}


@FUZZ
@given(node=st.sampled_from(["h", "c1"]), which=st.integers(0, 1), raw=st.binary(max_size=2000))
def test_raw_bytes_to_serving_nodes(deployment, node, which, raw) -> None:  # noqa: F811
    method = SERVED[node][which]
    channel = _channel(deployment, node, "h" if node == "c1" else "client")
    try:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        _outcome(call, raw, timeout=5)
    finally:
        channel.close()


def test_serving_nodes_still_serve(deployment) -> None:  # noqa: F811
    certs = deployment["certs"]
    for node, cert in (("h", "client"), ("c1", "h")):
        address = deployment[{"h": "host", "c1": "collab"}[node]].address
        _healthy_tls(address, sh.client_tls(certs, cert), node)
    reply = deployment["stub"].Predict(serving_pb2.PredictRequest(ids=["1"]), timeout=10)
    assert [p.id for p in reply.predictions] == ["1"]


def _healthy_tls(address: str, tls, server_name: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = open_channel(address, tls, server_name=server_name)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()

