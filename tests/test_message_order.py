"""Messages between two parties reach the runtime in the order they were sent, also when a
sender keeps many in flight (pipelined training) and a small one overtakes a large one; a
peer cannot replay a message or make a node hold an unbounded backlog; and a message that
cannot be delivered fails the sender promptly, naming the peer."""

from __future__ import annotations

import time

import pytest
import torch

from heteronn.v1 import party_node_pb2_grpc
from party_node.errors import BadMessage, TaskFailed
from party_node.runtime.links import AbortSignal, Message, Participant
from party_node.transport.handler import PeerMessageHandler
from party_node.transport.inbox import MAX_AHEAD, Inbox
from party_node.transport.node_state import NodeState
from party_node.transport.peers import GrpcPeers
from party_node.transport.servicer import SERVICE_NAME
from tests.harness import free_port
from tests.node_rig import CountingServicer
from wire.grpc_factory import start_server
from wire.latency_proxy import LatencyProxy


def msg(batch: int, kind: str = "train.features") -> Message:
    return Message(kind, 1, batch, tensors={"features": torch.zeros(1, 1)})


def test_inbox_hands_messages_over_in_sender_order():
    inbox = Inbox(AbortSignal())
    for seq in (3, 1, 4, 2):
        inbox.put("c1", msg(seq), seq)
    got = [inbox.get("c1", 1, "collaborator 'c1'").batch for _ in range(4)]
    assert got == [1, 2, 3, 4]


def test_inbox_refuses_a_replayed_or_far_ahead_message():
    inbox = Inbox(AbortSignal())
    inbox.put("c1", msg(1), 1)
    inbox.put("c1", msg(3), 3)
    with pytest.raises(BadMessage, match=r"sent message number 1 .* twice"):
        inbox.put("c1", msg(1), 1)
    with pytest.raises(BadMessage, match=r"sent message number 3 .* twice"):
        inbox.put("c1", msg(3), 3)
    with pytest.raises(BadMessage, match=f"at most {MAX_AHEAD} messages may be in flight"):
        inbox.put("c1", msg(9), 2 + MAX_AHEAD)
    inbox.put("c2", msg(1), 1)  # every sender has its own numbering


class Pair:
    """A host node's server (handler, inbox) and a collaborator's GrpcPeers dialling it,
    through a latency proxy."""

    def __init__(self, delay_s: float, window: int) -> None:
        parts = (Participant("h", "host", "h"), Participant("c1", "collaborator", "c1"))
        self.host = NodeState("h", "t", "host", AbortSignal())
        self.host.set_participants(parts)
        servicer = CountingServicer(PeerMessageHandler(self.host))
        self.calls = servicer.calls

        def register(server):
            party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        self.server = start_server("127.0.0.1:0", register)
        self.proxy = LatencyProxy(f"127.0.0.1:{self.server.port}", delay_s).start()
        collab = NodeState("c1", "t", "collaborator", AbortSignal())
        self.peers = GrpcPeers(collab, "collaborator", None, send_timeout=30)
        self.peers.set_window(window)
        host = Participant("h", "host", "h", address=self.proxy.address)
        self.peers.connect((host, Participant("c1", "collaborator", "c1")))

    def close(self) -> None:
        self.peers.close()
        self.proxy.close()
        self.server.stop(0)


def test_many_in_flight_arrive_in_order_over_a_slow_link():
    pair = Pair(delay_s=0.01, window=16)
    try:
        # Large ones (over a chunk: a stream), then small (one unary request each).
        sizes = [70_000 if b % 3 == 0 else 1 for b in range(24)]
        most_in_flight = 0
        for b, rows in enumerate(sizes):
            features = torch.full((rows, 4), float(b))
            pair.peers.send("h", Message("train.features", 1, b, tensors={"features": features}))
            most_in_flight = max(most_in_flight, len(pair.peers._outboxes["h"].in_flight))
        pair.peers.flush()
        got = [pair.host.inbox.get("c1", 10, "collaborator 'c1'") for _ in sizes]
    finally:
        pair.close()
    assert [m.batch for m in got] == list(range(len(sizes)))
    assert all(float(m.tensors["features"][0, 0]) == m.batch for m in got)
    assert most_in_flight > 1, "each send waited for its answer"
    assert pair.calls == {"FeatureExchange": 8, "FeatureExchangeOne": 16}


def test_a_send_that_waits_returns_once_the_peer_has_it_after_the_posted_ones():
    """The host's gradient thread and an exact-mode collaborator send with wait=True: with a
    window set, the send still returns only once the peer holds the message (a blocking call,
    no thread per call), and after the messages posted before it."""
    pair = Pair(delay_s=0.05, window=4)
    try:
        pair.peers.send("h", msg(0))  # posted: still on its way when send returns
        assert pair.host.inbox.queued_bytes("c1") == 0
        pair.peers.send("h", msg(1), wait=True)
        assert pair.host.inbox.queued_bytes("c1") > 0  # no flush: it is there
        got = [pair.host.inbox.get("c1", 10, "collaborator 'c1'").batch for _ in range(2)]
    finally:
        pair.close()
    assert got == [0, 1]


def test_an_undeliverable_message_fails_the_sender_naming_the_peer():
    state = NodeState("c1", "t", "collaborator", AbortSignal())
    peers = GrpcPeers(state, "collaborator", None, send_timeout=5)
    peers.set_window(4)
    dead = f"127.0.0.1:{free_port()}"
    peers.connect((Participant("h", "host", "h", address=dead),))
    try:
        peers.send("h", msg(0))  # posted: returns before the call fails
        with pytest.raises(
            TaskFailed, match=rf"cannot deliver train\.features to host 'h' at {dead}"
        ):
            peers.flush()
        peers.send("h", msg(1))
        # Waiting for the host's answer ends as soon as the message is known lost.
        started = time.monotonic()
        with pytest.raises(TaskFailed, match=r"cannot deliver train\.features to host 'h'"):
            peers.receive("h", 30)
        assert time.monotonic() - started < 10
    finally:
        peers.close()
