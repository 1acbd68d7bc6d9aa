"""Exact-mode training sends one call per batch: the collaborator's FeatureExchangeOne waits
for the host's gradient of that batch and brings it back in its response (transport.replies).
A gradient the host makes too late still arrives, by its own call; a call may wait only for
the gradient of the features it carries, one at a time; and an answer that does not belong to
the batch fails the collaborator, naming the host, with nothing queued."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from heteronn.v1 import party_node_pb2, party_node_pb2_grpc
from party_node.errors import TaskFailed
from party_node.runtime.links import AbortSignal, Message, Participant
from party_node.transport.handler import Limits, PeerMessageHandler
from party_node.transport.node_state import NodeState
from party_node.transport.peers import GrpcPeers
from party_node.transport.replies import Replies
from party_node.transport.serde import message_to_payload
from party_node.transport.servicer import SERVICE_NAME
from tests.node_rig import collaborator_sends, features, host_answers, peer_pair
from wire.grpc_factory import start_server

PARTS = (Participant("h", "host", "h"), Participant("c1", "collaborator", "c1"))


@pytest.fixture
def nodes(request):
    with peer_pair(getattr(request, "param", None)) as pair:
        yield pair


def test_the_gradient_comes_back_on_the_call_that_carried_the_features(nodes):
    host, collab = nodes
    answering = host_answers(host, 3)
    # Each gradient is in the inbox when the send returns: it came back on the call.
    collaborator_sends(collab, 3, lambda: collab.state.inbox.queued_bytes("h") > 0)
    answering.join(5)
    assert host.servicer.calls == {"FeatureExchangeOne": 3}
    assert collab.servicer.calls == {}, "a gradient took a call of its own"


@pytest.mark.parametrize("nodes", [Limits(reply_wait_s=0.2)], indirect=True)
def test_a_gradient_later_than_the_hosts_reply_wait_takes_its_own_call(nodes):
    host, collab = nodes
    answering = host_answers(host, 1, delay_s=0.6)
    started = time.monotonic()
    collab.peers.send("h", features(0), wait=True, reply="train.gradient")
    assert time.monotonic() - started < 0.55, "the call waited past the host's reply wait"
    got = collab.peers.receive("h", 10)
    answering.join(5)
    assert (got.kind, got.batch) == ("train.gradient", 0)
    assert collab.servicer.calls == {"GradientReturnOne": 1}
    assert not host.state.replies._slots, "the withdrawn slot was left behind"


def _call(stub, batch: int, reply_kind: str, kind: str = "train.features", seq: int = 1):
    payload = message_to_payload(
        Message(kind, 1, batch, tensors={"features": torch.zeros(1, 1)}), "t", "c1", seq
    )
    request = party_node_pb2.FeatureExchangeOneRequest(
        header=payload.header, data=payload.SerializeToString(), reply_kind=reply_kind
    )
    return stub.FeatureExchangeOne.future(request, timeout=10)


def test_a_call_may_wait_only_for_the_gradient_of_its_features_and_one_at_a_time(nodes):
    host, _ = nodes
    channel = grpc.insecure_channel(host.address)
    stub = party_node_pb2_grpc.PartyNodeServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            _call(stub, 0, "train.features").result()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "may wait only for 'train.gradient' to 'train.features'" in refused.value.details()
        assert host.state.inbox.queued_bytes("c1") == 0, "refused before the body"

        waiting = _call(stub, 0, "train.gradient", seq=1)
        deadline = time.monotonic() + 5
        while not host.state.replies._slots and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as second:
            _call(stub, 1, "train.gradient", seq=2).result()
        assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already has a call waiting for an answer here" in second.value.details()
        host.state.abort.set("stopped by the test")  # a failing task answers at once
        assert waiting.result(timeout=3).reply == b""
    finally:
        channel.close()


class WrongHost(party_node_pb2_grpc.PartyNodeServiceServicer):
    """A host that answers every call with the gradient `make(batch)` builds."""

    def __init__(self, make) -> None:
        self.make = make

    def FeatureExchangeOne(self, request, context):
        return party_node_pb2.FeatureExchangeOneResponse(reply=self.make(request.header.batch))


def _answer(batch: int, sender: str = "h", kind: str = "train.gradient") -> bytes:
    msg = Message(kind, 1, batch, tensors={"gradient": torch.zeros(4, 2)})
    return message_to_payload(msg, "t", sender, 1).SerializeToString()


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda b: _answer(b + 1), r"'train\.gradient' of round 1 batch 1"),
        (lambda b: _answer(b, sender="c2"), r"from 'c2'"),
        (lambda b: _answer(b, kind="train.features"), r"sent 'train\.features' of round 1"),
        (lambda b: b"\xff" * 40, r"not a valid Payload"),
        (lambda b: b"\x00" * (2_000_000), r"at most 1000000 per message"),
    ],
)
def test_an_answer_that_is_not_the_batchs_gradient_fails_the_collaborator(make, named):
    servicer = WrongHost(make)

    def register(server):
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    server = start_server("127.0.0.1:0", register)
    state = NodeState("c1", "t", "collaborator", AbortSignal())
    handler = PeerMessageHandler(state, Limits(max_payload_bytes=1_000_000))
    peers = GrpcPeers(state, "collaborator", None, send_timeout=10, handler=handler)
    peers.connect((Participant("h", "host", "h", address=f"127.0.0.1:{server.port}"), PARTS[1]))
    try:
        with pytest.raises(
            TaskFailed, match=r"answer of host 'h' at .* to train\.features of batch 0 was refused"
        ) as err:
            peers.send("h", features(0), wait=True, reply="train.gradient")
        assert state.inbox.queued_bytes("h") == 0
        assert err.match(named)
    finally:
        peers.close()
        server.stop(0)


def test_replies_hand_an_answer_to_the_waiting_call_only():
    replies = Replies()
    slot = replies.expect("c1", "train.gradient", 1, 5)
    assert slot is not None
    assert replies.expect("c1", "train.gradient", 1, 6) is None  # one per sender
    assert not replies.offer("c1", "train.gradient", 1, 4, b"old")  # another batch
    assert not replies.offer("c2", "train.gradient", 1, 5, b"other peer")
    assert replies.offer("c1", "train.gradient", 1, 5, b"this")
    assert replies.wait(slot, 1.0, lambda: False) == b"this"
    late = replies.expect("c1", "train.gradient", 1, 6)
    assert late is not None
    assert replies.wait(late, 0.05, lambda: False) is None
    assert not replies.offer("c1", "train.gradient", 1, 6, b"too late"), "withdrawn"
