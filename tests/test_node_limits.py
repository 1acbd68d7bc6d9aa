"""What a party node accepts from peers, over real gRPC on 127.0.0.1 (issue 9, items 3-6
and 10): RPCs its role does not consume, oversized or undeclared payloads and calls without
a deadline are refused from the first chunk; each sender's queue is bounded with
backpressure; each sender's open calls are capped; only the task's host (by its certificate
under mutual TLS) may run PSI on a collaborator; malformed messages are INVALID_ARGUMENT."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
import pytest

from heteronn.v1 import common_pb2, party_node_pb2
from party_node.runtime.links import Message
from party_node.runtime.outputs import output_dir
from party_node.settings import NodeSettings
from party_node.simulate import run_local
from party_node.transport.monitoring import NodeObserver
from tests import node_rig as rig
from tests import synthetic as syn
from wire import dev_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    assert dev_certs.main(["--out", str(out), "h", "c1", "c2", "mallory"]) == 0
    return out


def _error(call, *args, **kw) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        result = call(*args, **kw)
        if hasattr(result, "__next__"):
            next(result)
    return error.value.code(), error.value.details(), time.monotonic() - started


# ---- item 3: memory -------------------------------------------------------------------------
def test_rpc_the_role_does_not_consume_is_refused_before_the_body() -> None:
    """Features sent to a collaborator: refused on the first chunk, while the rest of a
    2 GiB body is still unsent."""
    node = rig.start("c1")
    channel, stub = node.stub()
    release = threading.Event()
    try:
        first = rig.chunks("FeatureExchange", rig.payload("c2"))[0]
        first.total_bytes, first.last = 2 << 30, False
        code, details, took = _error(
            stub.FeatureExchange, rig.stalling(first, release), timeout=20
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and took < 5
        assert "node 'c1' is a collaborator; FeatureExchange carries messages to the host" in (
            details
        )
        assert node.state.inbox.queued_bytes("c2") == 0
    finally:
        release.set()
        channel.close()
        node.stop()


def test_announced_size_is_checked_against_the_limit_of_its_kind() -> None:
    node = rig.start("h", max_payload_bytes_by_kind={"train.features": 1000})
    channel, stub = node.stub()
    release = threading.Event()
    try:
        first = rig.chunks("FeatureExchange", rig.payload("c1"))[0]
        first.total_bytes, first.last = 2 << 30, False
        code, details, took = _error(
            stub.FeatureExchange, rig.stalling(first, release), timeout=20
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 5
        assert "announced 2147483648 bytes for 'train.features'" in details
        assert "at most 1000 per message (node setting max_payload_bytes_by_kind)" in details
        small = rig.payload("c1", kind="test.features", rows=1)
        stub.FeatureExchange(iter(rig.chunks("FeatureExchange", small)), timeout=5)
        big = rig.payload("c1", rows=200)  # 2400 bytes of train.features
        code, details, _ = _error(
            stub.FeatureExchange, iter(rig.chunks("FeatureExchange", big)), timeout=5
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_payload_bytes_by_kind" in details
    finally:
        release.set()
        channel.close()
        node.stop()


def test_each_senders_queue_is_bounded_with_backpressure() -> None:
    node = rig.start("h", max_queued_bytes_per_sender=3000)
    channel, stub = node.stub()
    try:
        send = lambda b, timeout=5: stub.FeatureExchange(  # noqa: E731
            iter(rig.chunks("FeatureExchange", rig.payload("c1", rows=100, batch=b))),
            timeout=timeout,
        )
        send(0)  # ~1.2 KB each: two fit
        send(1)
        code, details, took = _error(send, 2, timeout=2)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 2
        assert "max_queued_bytes_per_sender = 3000" in details
        assert node.state.inbox.queued_bytes("c2") == 0  # other senders are not affected
        stub.FeatureExchange(
            iter(rig.chunks("FeatureExchange", rig.payload("c2", rows=100))), timeout=5
        )
        # A blocked sender goes on as soon as the runtime takes a message.
        waiting = threading.Thread(target=send, args=(3, 10))
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive()
        got = node.state.inbox.get("c1", 5, "c1")
        assert (got.kind, got.batch) == ("train.features", 0)
        waiting.join(timeout=5)
        assert not waiting.is_alive()
        assert [node.state.inbox.get("c1", 5, "c1").batch for _ in range(2)] == [1, 3]
    finally:
        channel.close()
        node.stop()


# ---- item 4: worker starvation ----------------------------------------------------------------
def test_calls_need_a_bounded_deadline() -> None:
    node = rig.start("h", max_call_s=60)
    channel, stub = node.stub()
    try:
        message = rig.chunks("FeatureExchange", rig.payload("c1"))
        code, details, _ = _error(stub.FeatureExchange, iter(message))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "the call has no deadline" in details
        code, details, _ = _error(stub.FeatureExchange, iter(message), timeout=3600)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "accepts at most 60 s (node setting max_call_s)" in details
        stub.FeatureExchange(iter(message), timeout=30)
    finally:
        channel.close()
        node.stop()


def test_host_refuses_psi_at_once() -> None:
    node = rig.start("h")
    channel, stub = node.stub()
    try:
        request = party_node_pb2.PsiRequest(
            header=common_pb2.Header(task_id=rig.TASK, sender="c1", kind="psi"),
            step=party_node_pb2.PSI_STEP_BLINDED,
        )
        code, details, took = _error(stub.Psi, iter([request]), timeout=30)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and took < 2
        assert "the host runs PSI against its collaborators and accepts no Psi call" in details
    finally:
        channel.close()
        node.stop()


def test_open_calls_per_sender_are_capped_and_cancelled_callers_free_them() -> None:
    node = rig.start("h", max_streams_per_sender=2)
    channel, stub = node.stub()
    release = threading.Event()
    calls = []
    try:
        first = rig.chunks("FeatureExchange", rig.payload("c1"), chunk_bytes=16)[0]
        for _ in range(2):
            calls.append(stub.FeatureExchange.future(rig.stalling(first, release), timeout=30))
        deadline = time.monotonic() + 5
        while node.open_calls() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, details, took = _error(stub.FeatureExchange, rig.stalling(first, release), timeout=30)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 5
        assert "'c1' has 2 calls open already" in details and "max_streams_per_sender" in details
        for call in calls:
            call.cancel()
        deadline = time.monotonic() + 5
        while node.open_calls() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.open_calls() == 0, "a cancelled caller kept its slot"
    finally:
        release.set()
        channel.close()
        node.stop()


# ---- item 5: PSI is authenticated ------------------------------------------------------------
def _psi(stub, sender: str, task: str = rig.TASK):
    request = party_node_pb2.PsiRequest(
        header=common_pb2.Header(task_id=task, sender=sender, kind="psi"),
        step=party_node_pb2.PSI_STEP_BLINDED,
        total=1,
    )
    return _error(stub.Psi, iter([request]), timeout=10)


def test_only_the_tasks_host_runs_psi_over_mutual_tls(certs: Path) -> None:
    node = rig.start("c1", certs, psi_wait_s=0.5)
    try:
        for cert, sender, code, needle in (
            ("c2", "h", grpc.StatusCode.PERMISSION_DENIED,
             "names ['c2', 'localhost'], but the message claims to come from 'h'"),
            ("c2", "c2", grpc.StatusCode.PERMISSION_DENIED,
             "Psi is for messages from a host; 'c2' is the collaborator"),
            ("mallory", "h", grpc.StatusCode.PERMISSION_DENIED,
             "peer certificate 'mallory'"),
            ("h", "h", grpc.StatusCode.UNAVAILABLE, "not ready for PSI yet"),
        ):
            channel, stub = node.stub(certs, cert)
            try:
                got, details, _ = _psi(stub, sender)
            finally:
                channel.close()
            assert (got, needle in details) == (code, True), (cert, sender, details)
    finally:
        node.stop()


def test_only_the_tasks_host_runs_psi_in_plaintext() -> None:
    node = rig.start("c1", psi_wait_s=0.5)
    channel, stub = node.stub()
    try:
        code, details, _ = _psi(stub, "c2")
        assert code == grpc.StatusCode.PERMISSION_DENIED and "from a host" in details
        code, details, _ = _psi(stub, "mallory")
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not a participant" in details
        code, details, _ = _psi(stub, "h", task="other")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not 'other'" in details
        code, details, _ = _psi(stub, "h")
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        node.stop()


# ---- item 6: ids reach no path ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../../x", "/abs/path", "..", ".", "a/b", "x" * 129, ""])
def test_ids_are_one_safe_path_component(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid id"):
        NodeSettings(node_id=bad, task_id="t", coordinator="c:1", tls_plaintext=True)
    with pytest.raises(ValueError, match="is not a valid id"):
        NodeSettings(node_id="h", task_id=bad, coordinator="c:1", tls_plaintext=True)
    with pytest.raises(ValueError):
        output_dir(tmp_path, "h", bad)
    assert list(tmp_path.iterdir()) == []


def test_outputs_stay_under_the_work_dir(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "work" / "h").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="is not inside the work dir"):
        output_dir(tmp_path / "work", "h", "t")
    assert output_dir(tmp_path / "work", "c1", "t") == (tmp_path / "work" / "c1" / "t").resolve()
    host = syn.SynthHost("h", ["h", "c1"], 32, 1, syn.Faults(""))
    host.feature_key = "../h"
    with pytest.raises(ValueError, match="is not a valid id"):
        run_local(host, [syn.SynthCollaborator("c1", 32, syn.Faults(""))], workdir=tmp_path)


# ---- item 10: status, decoding, logs ---------------------------------------------------------
def test_get_status_answers_the_runtimes_phase_and_round() -> None:
    node = rig.start("c1")
    channel, stub = node.stub()
    try:
        status = stub.GetStatus(party_node_pb2.GetStatusRequest(), timeout=5)
        assert (status.node_id, status.task_id, status.phase) == ("c1", "t", 0)
        NodeObserver(node.metrics, rig.TASK, node.state).phase("TRAIN", 3)
        status = stub.GetStatus(party_node_pb2.GetStatusRequest(), timeout=5)
        assert (status.phase, status.round) == (common_pb2.PHASE_TRAIN, 3)
    finally:
        channel.close()
        node.stop()


def test_undecodable_chunks_and_overflowing_shapes_are_invalid_argument() -> None:
    node = rig.start("h")
    channel, stub = node.stub()
    try:
        raw = channel.stream_unary(
            "/heteronn.v1.PartyNodeService/FeatureExchange",
            request_serializer=None, response_deserializer=None,
        )
        code, details, _ = _error(raw, iter([b"\xff\xff\xff"]), timeout=5)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid heteronn.v1.FeatureExchangeRequest" in details
        p = rig.payload("c1")
        p.tensors["x"].shape[:] = [2**32, 2**32]  # int64 product wraps to 0
        p.tensors["x"].data = b""
        code, details, _ = _error(
            stub.FeatureExchange, iter(rig.chunks("FeatureExchange", p)), timeout=5
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "elements; at most" in details
        body = rig.chunks("FeatureExchange", rig.payload("c1"))
        body[0].data = b"\xff" * len(body[0].data)
        code, details, _ = _error(stub.FeatureExchange, iter(body), timeout=5)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid Payload" in details
    finally:
        channel.close()
        node.stop()


def test_peer_ids_are_escaped_in_logs(caplog) -> None:
    caplog.set_level(logging.INFO, logger="heteronn")
    node = rig.start("h")
    channel, stub = node.stub()
    try:
        forged = "x\n2026-01-01 INFO heteronn: FORGED"
        p = rig.payload(forged)
        code, _, _ = _error(stub.FeatureExchange, iter(rig.chunks("FeatureExchange", p)), timeout=5)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
        node.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert any("FORGED" in line for line in lines)
    assert not any("\n" in line for line in lines)


def test_messages_reach_the_runtime_in_order() -> None:
    """Sanity: what the bounds let through arrives whole and in order."""
    node = rig.start("c1")
    channel, stub = node.stub()
    try:
        for b in range(3):
            p = rig.payload("h", kind="train.gradient", batch=b, rows=3000)  # > 1 chunk
            stub.GradientReturn(iter(rig.chunks("GradientReturn", p)), timeout=5)
        got = [node.state.inbox.get("h", 5, "h") for _ in range(3)]
        assert [m.batch for m in got] == [0, 1, 2]
        assert all(isinstance(m, Message) and m.tensors["x"].shape == (3000, 3) for m in got)
    finally:
        channel.close()
        node.stop()
