"""Exact-mode training messages travel on streams the receiver subscribed to and reads on its
own thread (transport.feeds, transport.subscriptions): after one notice per direction, no call
per message; order is kept when a message leaves the stream's scope or size; only the peer of
the other role may subscribe, as itself; what comes on a stream is checked like a call's
message; and a read blocked on a stream ends on the task's abort and on its timeout."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.errors import TaskFailed
from party_node.runtime.links import Message, Participant
from party_node.transport.serde import message_to_payload
from party_node.transport.servicer import SERVICE_NAME
from tests.node_rig import (
    PeerNode,
    collaborator_sends,
    features,
    gradient,
    host_answers,
    peer_pair,
)
from wire.grpc_factory import start_server


@pytest.fixture
def nodes():
    with peer_pair() as pair:
        yield pair


def subscribed(host: PeerNode, collab: PeerNode, round_no: int = 1) -> None:
    """Both subscribe to each other's messages of `round_no`; returns once both feeds are up."""
    host.peers.subscribe("c1", round_no)
    collab.peers.subscribe("h", round_no)
    deadline = time.monotonic() + 10
    while not (collab.state.feeds.current("h") and host.state.feeds.current("c1")):
        assert time.monotonic() < deadline, "a subscription did not reach its peer"
        time.sleep(0.01)


def test_a_rounds_messages_travel_on_the_streams_after_one_notice_each_way(nodes):
    host, collab = nodes
    subscribed(host, collab)
    answering = host_answers(host, 12)
    collaborator_sends(collab, 12)
    answering.join(5)
    # The notices (route.stream) are the only calls; every batch went on the streams.
    assert host.servicer.calls == {"FeatureExchangeOne": 1}
    assert collab.servicer.calls == {"GradientReturnOne": 1}


def test_a_message_outside_the_streams_scope_or_size_ends_it_and_keeps_the_order(nodes):
    host, collab = nodes
    subscribed(host, collab)
    sent = [
        features(0),
        features(1, rows=200_000),  # 1.6 MB: over one chunk, goes by a streamed call
        features(2),
        features(3, kind="test.features", round_no=0),
    ]
    for message in sent:
        collab.peers.send("h", message, wait=True)
    got = [host.peers.receive("c1", 10) for _ in sent]
    assert [(m.kind, m.batch, m.tensors["features"].shape[0]) for m in got] == [
        (m.kind, m.batch, m.tensors["features"].shape[0]) for m in sent
    ]
    assert collab.state.feeds.current("h") is None, "the stream went on after its scope"
    assert host.servicer.calls == {"FeatureExchangeOne": 3, "FeatureExchange": 1}


def _subscribe(node: PeerNode, sender: str, task: str = "t", timeout: float | None = 10):
    channel = grpc.insecure_channel(node.address)
    stub = party_node_pb2_grpc.PartyNodeServiceStub(channel)
    header = common_pb2.Header(task_id=task, sender=sender, round=1)
    call = stub.Subscribe(party_node_pb2.SubscribeRequest(header=header), timeout=timeout)
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    channel.close()
    return err.value


@pytest.mark.parametrize(
    ("sender", "task", "timeout", "code", "named"),
    [
        ("c2", "t", 10, grpc.StatusCode.PERMISSION_DENIED, "'c2' is not a participant"),
        ("c1", "t", 10, grpc.StatusCode.PERMISSION_DENIED, "'c1' is the collaborator"),
        ("h", "other", 10, grpc.StatusCode.FAILED_PRECONDITION, "not 'other'"),
        ("h", "t", None, grpc.StatusCode.INVALID_ARGUMENT, "no deadline"),
    ],
)
def test_only_the_other_roles_participant_may_subscribe(nodes, sender, task, timeout, code, named):
    _host, collab = nodes
    err = _subscribe(collab, sender, task, timeout)
    assert err.code() == code and named in err.details(), err.details()
    assert collab.state.feeds.current(sender) is None


class HostileFeed(party_node_pb2_grpc.PartyNodeServiceServicer):
    """A 'host' whose stream carries what it likes."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def Subscribe(self, request, context):
        yield from (party_node_pb2.SubscribeResponse(data=d) for d in self.items)
        time.sleep(5)


def _streamed(batch: int, sender: str = "h", task: str = "t") -> bytes:
    return message_to_payload(gradient(batch), task, sender, 2).SerializeToString()


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (b"\xff" * 40, "not a valid Payload"),
        (_streamed(0, sender="c2"), "from 'c2'"),
        (_streamed(0, task="other"), "of task 'other'"),
        (b"\x00" * (1 << 20 | 1), "at most 1048576 per message"),
    ],
)
def test_a_bad_message_on_the_stream_fails_the_reader_naming_the_peer(item, named):
    hostile = HostileFeed([item])

    def register(server):
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(hostile, server)
        return [SERVICE_NAME]

    server = start_server("127.0.0.1:0", register)
    collab = PeerNode("c1", "collaborator")
    try:
        collab.peers.connect(
            (
                Participant("h", "host", "h", address=f"127.0.0.1:{server.port}"),
                Participant("c1", "collaborator", "c1", address=collab.address),
            )
        )
        collab.peers.subscribe("h", 1)
        # The host's notice, as its call would have delivered it.
        collab.state.inbox.put("h", Message("route.stream", 1, 0), 1)
        with pytest.raises(TaskFailed, match="streamed to this node was refused") as err:
            collab.peers.receive("h", 10)
        assert err.match(named)
        assert collab.state.inbox.queued_bytes("h") == 0
    finally:
        collab.close()
        server.stop(0)


def _reading_the_stream(host: PeerNode, collab: PeerNode) -> None:
    """The collaborator has taken a gradient from its stream: its next read waits there."""
    subscribed(host, collab)
    host.peers.send("c1", gradient(0), wait=True)
    assert collab.peers.receive("h", 10).batch == 0
    assert collab.peers.subscriptions.live("h") is not None


def test_a_read_blocked_on_the_stream_ends_on_its_timeout(nodes):
    host, collab = nodes
    _reading_the_stream(host, collab)
    started = time.monotonic()
    with pytest.raises(TaskFailed, match=r"host 'h' at .* sent nothing for 0\.5 s"):
        collab.peers.receive("h", 0.5)
    assert time.monotonic() - started < 3


def test_a_read_blocked_on_the_stream_ends_on_the_tasks_abort(nodes):
    host, collab = nodes
    _reading_the_stream(host, collab)
    threading.Timer(0.3, lambda: collab.state.abort.set("the coordinator aborted")).start()
    started = time.monotonic()
    with pytest.raises(TaskFailed, match="the coordinator aborted"):
        collab.peers.receive("h", 30)
    assert time.monotonic() - started < 3
