"""A bounded property-based fuzz of the RPC surface (issue 9), against real servers on
127.0.0.1: a coordinator and a host and a collaborator node. Whatever a caller sends
(generated messages with hostile field values, or raw bytes that may not even decode), every
call ends with OK or one of the documented status codes, never UNKNOWN or INTERNAL, and
the servers keep serving. Examples are few, derandomized and time-boxed, so `make test`
stays fast and repeatable."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heteronn.v1 import common_pb2, coordinator_pb2, party_node_pb2
from services.client import CoordinatorClient, task_spec
from services.server import CoordinatorSettings, RunningCoordinator, start_coordinator
from tests import node_rig as rig
from wire.grpc_factory import open_channel

P = coordinator_pb2
#: Codes a well-behaved server may answer a hostile caller with.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ids = st.one_of(
    st.sampled_from(["t", "h", "c1", "c2", "fuzz", ".", "..", "../x", "/abs", ""]),
    st.text(max_size=140),
)
seconds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e308, 604800.0, 604801.0, 5.0]),
)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
phases = st.one_of(st.sampled_from(list(range(8))), int32)


@pytest.fixture(scope="module")
def coordinator() -> Iterator[RunningCoordinator]:
    running = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=":memory:", plaintext=True, max_tasks=200)
    )
    with CoordinatorClient(running.address, timeout=5) as client:
        client.create_task(task_spec("t", ["h", "c1", "c2"], schedule_timeout_s=600))
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def client(coordinator: RunningCoordinator) -> Iterator[CoordinatorClient]:
    with CoordinatorClient(coordinator.address, timeout=5) as c:
        yield c


def _outcome(call, *args, **kw) -> grpc.StatusCode:
    try:
        result = call(*args, **kw)
        if hasattr(result, "__next__"):
            for _ in zip(range(2), result, strict=False):  # a watch: its first command(s)
                pass
            result.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, (error.code(), error.details())
        assert error.details(), "a refusal must say why"
        return error.code()


def _healthy(address: str) -> None:
    channel = open_channel(address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


# ---- coordinator -------------------------------------------------------------------------------
@FUZZ
@given(task_id=ids, nodes=st.lists(ids, max_size=70), sched=seconds, calc=seconds,
       mode=st.sampled_from(["plain", "secure", "", "x" * 300]), recover=st.booleans())
def test_create_task(client, task_id, nodes, sched, calc, mode, recover) -> None:
    spec = P.TaskSpec(task_id=task_id, participants=nodes, schedule_timeout_s=sched,
                      calculation_timeout_s=calc, mode=mode, recover=recover)
    code = _outcome(client.create_task, spec)
    if code == grpc.StatusCode.OK:
        assert math.isfinite(sched) and 0 < sched <= 604800


@FUZZ
@given(task_id=ids, node=ids, role=int32, feature_key=st.text(max_size=300),
       address=st.text(max_size=300), sched=seconds, calc=seconds, checkpoint=int32,
       agreement=st.dictionaries(st.text(max_size=300), st.text(max_size=5000), max_size=70))
def test_join_task(client, task_id, node, role, feature_key, address, sched, calc, checkpoint,
                   agreement) -> None:
    info = P.ParticipantInfo(node_id=node, role=role, feature_key=feature_key, address=address,
                             checkpoint_round=checkpoint)
    _outcome(client.join, task_id, info, schedule_timeout_s=sched, calculation_timeout_s=calc,
             agreement=agreement)


@FUZZ
@given(task_id=ids, node=ids, phase=phases, round_=int32, error=st.text(max_size=3000),
       train=int64, test=int64, digest=st.text(max_size=300), finished=st.booleans(),
       metrics=st.dictionaries(st.text(max_size=300), st.floats(), max_size=40))
def test_report_phase(client, task_id, node, phase, round_, error, train, test, digest,
                      finished, metrics) -> None:
    report = P.ReportPhaseRequest(
        task_id=task_id, node_id=node, phase=phase, round=round_, error=error, train_size=train,
        test_size=test, split_digest=digest, finished=finished, metrics=metrics,
    )
    _outcome(client.report, report)


@FUZZ
@given(task_id=ids, node=ids, page_size=int32, token=st.text(max_size=30),
       reason=st.text(max_size=3000))
def test_reads_watches_and_operator_calls(client, task_id, node, page_size, token,
                                          reason) -> None:
    _outcome(client.get_task, task_id)
    _outcome(client.list_tasks_page, page_size, token)
    _outcome(client.heartbeat, task_id, node)
    _outcome(lambda: iter(client.watch(task_id, node)._call))
    _outcome(client.cancel_task, task_id, reason)
    _outcome(client.delete_task, task_id)


@FUZZ
@given(method=st.sampled_from(["CreateTask", "GetTask", "ListTasks", "CancelTask", "DeleteTask",
                               "JoinTask", "ReportPhase", "Heartbeat", "WatchTask"]),
       raw=st.binary(max_size=2000))
def test_raw_bytes_to_the_coordinator(coordinator, method, raw) -> None:
    channel = open_channel(coordinator.address)
    try:
        path = f"/heteronn.v1.CoordinatorService/{method}"
        kind = channel.unary_stream if method == "WatchTask" else channel.unary_unary
        call = kind(path, request_serializer=None, response_deserializer=None)
        _outcome(call, raw, timeout=5)
    finally:
        channel.close()


def test_coordinator_still_serves(coordinator, client) -> None:
    _healthy(coordinator.address)
    client.create_task(task_spec("after-fuzz", ["h", "c1"]))
    assert client.get_task("after-fuzz").phase == common_pb2.PHASE_WAITING_FOR_NODES
    assert "after-fuzz" in {t.spec.task_id for t in client.list_tasks()}


# ---- party nodes ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, rig.Rig]]:
    started = {name: rig.start(name, psi_wait_s=0.2, max_payload_bytes=1 << 20,
                               max_queued_bytes_per_sender=1 << 20) for name in ("h", "c1")}
    yield started
    for node in started.values():
        node.stop()


headers = st.builds(
    common_pb2.Header, task_id=ids, round=int32, batch=int32, sender=ids,
    kind=st.sampled_from(["train.features", "test.features", "train.gradient", "psi", ""]),
)
tensors = st.builds(
    common_pb2.Tensor,
    dtype=st.sampled_from(["float32", "float64", "int64", "bool", "bfloat16", "complex", ""]),
    shape=st.lists(st.one_of(st.integers(-2, 6), int64), max_size=10),
    data=st.binary(max_size=300),
)
payloads = st.builds(
    common_pb2.Payload, header=headers,
    tensors=st.dictionaries(st.text(max_size=10), tensors, max_size=3),
    blobs=st.dictionaries(st.text(max_size=10), st.binary(max_size=100), max_size=2),
    end_of_stream=st.booleans(),
)


@FUZZ
@given(target=st.sampled_from(["h", "c1"]), rpc=st.sampled_from(list(rig.RPC)),
       payload=payloads, total=st.one_of(st.none(), int64), chunk=st.integers(1, 400),
       drop_last=st.booleans())
def test_data_calls(nodes, target, rpc, payload, total, chunk, drop_last) -> None:
    """A Payload (often malformed), its announced size honest or not, in chunks of any size,
    sometimes without its final chunk."""
    node = nodes[target]
    chunks = rig.chunks(rpc, payload, chunk)
    if total is not None:
        chunks[0].total_bytes = total
    if drop_last and len(chunks) > 1:
        chunks = chunks[:-1]
    channel, stub = node.stub()
    try:
        _outcome(getattr(stub, rpc), iter(chunks), timeout=5)
    finally:
        channel.close()
    _drain(node, payload.header.sender)


@FUZZ
@given(target=st.sampled_from(["h", "c1"]), rpc=st.sampled_from(["FeatureExchangeOne",
                                                                 "GradientReturnOne"]),
       payload=payloads, header=st.one_of(st.none(), headers), cut=st.integers(0, 3))
def test_one_chunk_calls(nodes, target, rpc, payload, header, cut) -> None:
    """A Payload (often malformed) in one unary request, its header copy honest or not,
    sometimes cut short."""
    node = nodes[target]
    data = payload.SerializeToString()
    request = getattr(party_node_pb2, f"{rpc}Request")(
        header=payload.header if header is None else header, data=data[: len(data) - cut]
    )
    channel, stub = node.stub()
    try:
        _outcome(getattr(stub, rpc), request, timeout=5)
    finally:
        channel.close()
    _drain(node, request.header.sender)


def _drain(node: rig.Rig, sender: str) -> None:
    while node.state.inbox.queued_bytes(sender):  # keep the queues empty
        node.state.inbox.get(sender, 1, "fuzz")


@FUZZ
@given(target=st.sampled_from(["h", "c1"]), header=headers,
       steps=st.lists(st.tuples(int32, st.binary(max_size=200), int64, st.booleans()),
                      min_size=1, max_size=4))
def test_psi_calls(nodes, target, header, steps) -> None:
    requests = [party_node_pb2.PsiRequest(header=header, step=s, data=d, total=t, last=last)
                for s, d, t, last in steps]
    channel, stub = nodes[target].stub()
    try:
        _outcome(stub.Psi, iter(requests), timeout=5)
    finally:
        channel.close()


@FUZZ
@given(method=st.sampled_from(["FeatureExchange", "GradientReturn", "FeatureExchangeOne",
                               "GradientReturnOne", "Psi", "GetStatus"]),
       raws=st.lists(st.binary(max_size=500), min_size=1, max_size=3))
def test_raw_bytes_to_a_node(nodes, method, raws) -> None:
    channel, _ = nodes["h"].stub()
    try:
        path = f"/heteronn.v1.PartyNodeService/{method}"
        if method == "GetStatus" or method.endswith("One"):
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            _outcome(call, raws[0], timeout=5)
        elif method == "Psi":
            call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
            _outcome(call, iter(raws), timeout=5)
        else:
            call = channel.stream_unary(path, request_serializer=None, response_deserializer=None)
            _outcome(call, iter(raws), timeout=5)
    finally:
        channel.close()


def test_nodes_still_serve(nodes) -> None:
    for node in nodes.values():
        _healthy(node.address)
        assert node.open_calls() == 0
