"""Clients to the other parties (the runtime's PeerLink over gRPC): one channel per peer,
payloads chunked, failures turned into messages that name the peer and its address."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.experimental

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.errors import NodeError, TaskFailed
from party_node.psi.engine_rpc import EngineOptions
from party_node.runtime.links import Message, Participant
from party_node.transport.feeds import ROUTE_STREAM, Feed
from party_node.transport.handler import PeerMessageHandler
from party_node.transport.inbox import silent
from party_node.transport.node_state import NodeState
from party_node.transport.psi_calls import PsiCalls
from party_node.transport.serde import message_to_payload
from party_node.transport.subscriptions import Subscriptions, stream_lost
from wire import limits
from wire.chunking import CHUNK_BYTES, serialized_to_chunks
from wire.grpc_factory import open_channel
from wire.metrics import Metrics
from wire.tls import TlsSettings


@dataclass
class _Outbox:
    """What this node has sent one peer: the last message number and the calls in flight."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0
    in_flight: deque[tuple[grpc.Future, str]] = field(default_factory=deque)


class GrpcPeers(PsiCalls):
    def __init__(
        self,
        state: NodeState,
        role: str,
        tls: TlsSettings | None,
        send_timeout: float,
        interceptors: Sequence[Any] = (),
        metrics: Metrics | None = None,
        max_call_s: float = limits.MAX_CALL_S,
        psi_engine: EngineOptions | None = None,
        psi_multiparty: bool = False,
        handler: PeerMessageHandler | None = None,
    ):
        """`psi_engine`: run PSI through the engine (spu) with these options; None runs
        the in-process ECDH protocol. `psi_multiparty`: with two or more collaborators, the
        multi-party protocol instead (the host learns only the final intersection).
        `handler`: this node's own, which checks the answers peers give on this node's calls
        (without it, no send waits for an answer: every answer comes by its own call)."""
        self.handler = handler
        self.interceptors = list(interceptors)
        self.psi_engine = psi_engine
        self.psi_multiparty = psi_multiparty
        self.state = state
        self.role = role
        self.tls = tls
        #: Every call to a peer carries a deadline no peer refuses (its max_call_s).
        self.send_timeout = min(send_timeout, max_call_s)
        self.max_call_s = max_call_s
        self.metrics = metrics
        self._channels: dict[str, grpc.Channel] = {}
        self.stubs: dict[str, party_node_pb2_grpc.PartyNodeServiceStub] = {}
        self.participants: dict[str, Participant] = {}
        self._outboxes: dict[str, _Outbox] = {}
        #: The streams of peers' messages this node reads (transport.subscriptions).
        self.subscriptions = Subscriptions(state, self.send_timeout)
        #: Messages per peer that may be on their way at once (0: each send waits for its
        #: answer). The task's training mode sets it (runtime.training_mode).
        self.window = 0

    def connect(self, participants: Sequence[Participant]) -> None:
        self.state.set_participants(tuple(participants))
        for p in participants:
            self.participants[p.node_id] = p
            if p.node_id == self.state.node_id or p.node_id in self._channels:
                continue
            if not p.address:
                raise TaskFailed(f"the coordinator has no address for {p.role} '{p.node_id}'")
            channel = open_channel(
                p.address,
                self.tls,
                self.interceptors,
                server_name=p.node_id,
                extra_options=[(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)],
            )
            self._channels[p.node_id] = channel
            self.stubs[p.node_id] = party_node_pb2_grpc.PartyNodeServiceStub(channel)
            self._outboxes[p.node_id] = _Outbox()
        self._count_channels()

    def _count_channels(self) -> None:
        if self.metrics is not None:
            self.metrics.peers_connected.set(len(self._channels))

    def describe(self, peer: str) -> str:
        p = self.participants.get(peer)
        return f"{p.role} '{peer}' at {p.address}" if p else f"'{peer}'"

    def set_window(self, messages: int) -> None:
        self.window = messages

    def send(self, peer: str, message: Message, wait: bool = False, reply: str = "") -> None:
        """Deliver `message` to `peer`, after everything sent to it before. With a window
        (and not `wait`), return once the call has started (at most `window` unanswered per
        peer); a failed delivery is raised by a later send, receive or flush. Otherwise return
        once the peer has it: a blocking call runs on this thread, where a posted one starts a
        thread per call to complete it (grpc's channel spin thread, whenever no other call is
        in flight: every message of exact mode; docs/performance.md).

        `reply`: the kind of `peer`'s answer to this message, which the call then waits for
        (bounded by the peer) and puts in this node's inbox, checked as if it had come by its
        own call; `receive` returns it next. If `peer` is waiting for this very message on
        its own call, it goes back on that call (transport.replies)."""
        if self.state.abort.is_set():
            raise TaskFailed(self.state.abort.reason)
        box = self._outboxes[peer]
        with box.lock:
            self._settle(peer, box, wait=False)
            feed = self._feed_for(peer, box, message)
            self._deliver(peer, box, message, wait, reply, feed)

    def _deliver(
        self, peer: str, box: _Outbox, message: Message, wait: bool, reply: str, feed: Feed | None
    ) -> None:
        """`send` under the outbox's lock, once the route is chosen: an answer waiting on the
        peer's call, else the peer's stream (`feed`), else a call of its own."""
        box.seq += 1
        payload = message_to_payload(message, self.state.task_id, self.state.node_id, box.seq)
        data = payload.SerializeToString()
        one = len(data) <= CHUNK_BYTES
        if one and self.state.replies.offer(peer, message.kind, message.round, message.batch, data):
            return
        if feed is not None:
            if feed.put(data):
                return
            feed.end()  # too large, or the peer stopped reading: the rest goes by calls
        method, request = self._call_for(self.stubs[peer], payload, data)
        if self.window == 0 or wait or reply:
            asks = bool(reply) and one and self.handler is not None and self.role != "host"
            if asks:
                request.reply_kind = reply
            try:
                # No wait_for_ready: a dead peer must fail the send now, not after the timeout.
                response = method(request, timeout=self.send_timeout)
            except grpc.RpcError as exc:
                self._failed(peer, message.kind, exc)
            if asks and response.reply:
                self._admit_reply(peer, reply, message, response.reply)
            return
        while len(box.in_flight) >= self.window:
            self._settle_one(peer, box.in_flight.popleft())
        box.in_flight.append((method.future(request, timeout=self.send_timeout), message.kind))

    def _feed_for(self, peer: str, box: _Outbox, message: Message) -> Feed | None:
        """The peer's stream if `message` goes on it (transport.feeds). The first message in
        a stream's scope switches the route: every earlier message delivered, the notice sent
        the usual way. A message outside the scope ends the stream."""
        feed = self.state.feeds.current(peer)
        if feed is None:
            return None
        if not feed.in_scope(message.kind, message.round):
            if feed.live:
                feed.end()
            return None
        if not feed.live:
            self._settle(peer, box, wait=True)
            self._deliver(peer, box, Message(ROUTE_STREAM, feed.round, 0), True, "", None)
            feed.live = True
        return feed

    def subscribe(self, peer: str, round_no: int) -> None:
        """Take `peer`'s training messages of round `round_no` from a stream read on the
        calling thread (transport.subscriptions), once `peer` switches to it."""
        if self.handler is not None:
            self.subscriptions.open(peer, round_no, self.stubs[peer])

    def _admit_reply(self, peer: str, kind: str, message: Message, data: bytes) -> None:
        assert self.handler is not None
        try:
            self.handler.admit_reply(peer, kind, message.round, message.batch, data)
        except NodeError as exc:
            raise TaskFailed(
                f"the answer of {self.describe(peer)} to {message.kind} of batch "
                f"{message.batch} was refused: {exc}"
            ) from None

    def _call_for(self, stub: Any, payload: common_pb2.Payload, data: bytes) -> tuple[Any, Any]:
        """The RPC carrying `payload` (serialized: `data`) to a peer of the other role, and
        its request: a Payload that fits one chunk goes in one unary request (a gRPC stream
        per message costs a client thread and a round of stream reads per call:
        docs/performance.md), a larger one as a stream of chunks."""
        host = self.role == "host"
        if len(data) <= CHUNK_BYTES:
            if host:
                one = party_node_pb2.GradientReturnOneRequest
                return stub.GradientReturnOne, one(header=payload.header, data=data)
            one = party_node_pb2.FeatureExchangeOneRequest
            return stub.FeatureExchangeOne, one(header=payload.header, data=data)
        if host:
            method, chunk_type = stub.GradientReturn, party_node_pb2.GradientReturnRequest
        else:
            method, chunk_type = stub.FeatureExchange, party_node_pb2.FeatureExchangeRequest
        return method, serialized_to_chunks(payload.header, data, chunk_type)

    def flush(self) -> None:
        """Wait until every message sent so far has been delivered (or raise why not)."""
        for peer, box in list(self._outboxes.items()):
            with box.lock:
                self._settle(peer, box, wait=True)

    def _settle(self, peer: str, box: _Outbox, wait: bool) -> None:
        """Take answered calls off the front of `box` (all of them if `wait`); raise for the
        first that failed."""
        while box.in_flight and (wait or box.in_flight[0][0].done()):
            self._settle_one(peer, box.in_flight.popleft())

    def _settle_one(self, peer: str, call: tuple[grpc.Future, str]) -> None:
        future, kind = call
        exc = future.exception()  # bounded by the call's own deadline (send_timeout)
        if exc is not None:
            self._failed(peer, kind, exc)

    def _check_deliveries(self) -> None:
        """While waiting for a peer: fail now if one of this node's messages did not arrive
        (the answer to it never would). Skips an outbox another thread is sending through."""
        for peer, box in list(self._outboxes.items()):
            if box.lock.acquire(blocking=False):
                try:
                    self._settle(peer, box, wait=False)
                finally:
                    box.lock.release()

    def _failed(self, peer: str, kind: str, exc: BaseException) -> None:
        if self.state.abort.is_set():
            raise TaskFailed(self.state.abort.reason) from None
        raise TaskFailed(self._rpc_failure(peer, kind, exc)) from None

    def _rpc_failure(self, peer: str, what: str, exc: BaseException) -> str:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return (
                f"cannot deliver {what} to {self.describe(peer)} ({code.name}: {details}); "
                "its node may have stopped or the network between us may be down — check "
                "both, then restart every party with recover=True"
            )
        name = code.name if code else "ERROR"
        return f"{self.describe(peer)} refused {what}: {name}: {details}"

    def receive(self, peer: str, timeout: float) -> Message:
        """`peer`'s next message: from the inbox, or once `peer` has switched to the stream
        this node subscribed to, read from it on this thread (transport.subscriptions)."""
        inbox, deadline = self.state.inbox, time.monotonic() + timeout
        while True:
            message = inbox.take(peer)
            if message is None:
                stream = self.subscriptions.live(peer)
                if stream is not None:
                    self._read_stream(peer, stream, timeout, deadline)
                    continue
                left = max(0.0, deadline - time.monotonic())
                message = inbox.get(peer, left, self.describe(peer), check=self._check_deliveries)
            if message.kind != ROUTE_STREAM:
                return message
            self.subscriptions.route(peer, message.round)

    def _read_stream(self, peer: str, stream: Any, timeout: float, deadline: float) -> None:
        """One message of `peer`'s stream into the inbox, checked as if it had come by call."""
        assert self.handler is not None
        data = self.subscriptions.read(
            stream,
            max(0.0, deadline - time.monotonic()),
            lambda: silent(self.describe(peer), timeout),
            lambda exc: stream_lost(self.describe(peer), exc),
        )
        if data is None:
            return
        try:
            self.handler.admit_streamed(peer, data)
        except NodeError as exc:
            raise TaskFailed(
                f"a message {self.describe(peer)} streamed to this node was refused: {exc}"
            ) from None

    def close(self) -> None:
        self.subscriptions.close()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._count_channels()
