"""Clients to the other parties (the runtime's PeerLink over gRPC): one channel per peer,
payloads chunked, failures turned into messages that name the peer and its address."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.errors import NodeError, TaskFailed
from party_node.psi import CollaboratorPsiSession, PsiError, PsiPool, run_host_psi
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.engine_session import EngineCollaboratorSession
from party_node.psi.multiparty_rpc import run_host_multiparty_psi
from party_node.psi.multiparty_session import MultipartyCollaboratorSession
from party_node.runtime.links import Message, Participant
from party_node.transport.handler import PeerMessageHandler
from party_node.transport.node_state import NodeState
from party_node.transport.serde import message_to_payload
from wire import limits
from wire.chunking import CHUNK_BYTES, serialized_to_chunks
from wire.grpc_factory import open_channel
from wire.limits import shown
from wire.metrics import Metrics
from wire.tls import TlsSettings


@dataclass
class _Outbox:
    """What this node has sent one peer: the last message number and the calls in flight."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0
    in_flight: deque[tuple[grpc.Future, str]] = field(default_factory=deque)


class GrpcPeers:
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
            channel = open_channel(p.address, self.tls, self.interceptors, server_name=p.node_id)
            self._channels[p.node_id] = channel
            self.stubs[p.node_id] = party_node_pb2_grpc.PartyNodeServiceStub(channel)
            self._outboxes[p.node_id] = _Outbox()
        self._count_channels()

    def _count_channels(self) -> None:
        if self.metrics is not None:
            self.metrics.peers_connected.set(len(self._channels))

    def _peer_psi_size(self, size: int) -> None:
        """The peers' set sizes PSI revealed (the host: summed over its collaborators)."""
        if self.metrics is not None:
            self.metrics.psi_set_size.labels(task_id=self.state.task_id, which="peer").set(size)

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
        stub, box = self.stubs[peer], self._outboxes[peer]
        with box.lock:
            self._settle(peer, box, wait=False)
            box.seq += 1
            payload = message_to_payload(message, self.state.task_id, self.state.node_id, box.seq)
            data = payload.SerializeToString()
            one = len(data) <= CHUNK_BYTES
            if one and self.state.replies.offer(
                peer, message.kind, message.round, message.batch, data
            ):
                return
            method, request = self._call_for(stub, payload, data)
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
        return self.state.inbox.get(
            peer, timeout, self.describe(peer), check=self._check_deliveries
        )

    def _psi_header(self) -> common_pb2.Header:
        return common_pb2.Header(task_id=self.state.task_id, sender=self.state.node_id, kind="psi")

    def _psi_header_check(self, sender: str) -> Callable[[common_pb2.Header], None]:
        """Every PSI message of a call must name this task and the peer called (the caller's
        certificate was checked when the call opened)."""
        task = self.state.task_id

        def check(header: common_pb2.Header) -> None:
            if header.task_id != task or header.sender != sender:
                raise PsiError(
                    f"a PSI message names sender {shown(header.sender)} of task "
                    f"{shown(header.task_id)}; expected '{sender}' of task '{task}'"
                )

        return check

    def _address_host(self, node_id: str) -> str:
        return self.participants[node_id].address.rpartition(":")[0]

    def psi_as_host(self, ids: Sequence[str], round_timeout: float) -> set[str]:
        stubs = {
            p: self.stubs[p] for p, info in self.participants.items() if info.role == "collaborator"
        }
        sizes: dict[str, int] = {}
        try:
            if self.psi_multiparty and len(stubs) >= 2:
                final = run_host_multiparty_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    min(round_timeout, self.max_call_s),
                    cancel=self.state.abort,
                    check_header=self._psi_header_check,
                    peer_sizes=sizes,
                )
                self._peer_psi_size(sum(sizes.values()))
                return final
            if self.psi_engine is not None:
                final = run_host_engine_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    self.psi_engine,
                    min(round_timeout, self.max_call_s),
                    cancel=self.state.abort,
                    peer_hosts={name: self._address_host(name) for name in stubs},
                    peer_sizes=sizes,
                )
                self._peer_psi_size(sum(sizes.values()))
                return final
            with PsiPool() as pool:
                final = run_host_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    pool,
                    min(round_timeout, self.max_call_s),
                    cancel=self.state.abort,
                    peer_sizes=sizes,
                )
        except (PsiError, TimeoutError) as exc:
            raise TaskFailed(self.state.abort.reason or str(exc)) from None
        self._peer_psi_size(sum(sizes.values()))
        return final

    def psi_as_collaborator(self, ids: Sequence[str], timeout: float) -> set[str]:
        host = next(p for p in self.participants.values() if p.role == "host")
        collaborators = [p for p, i in self.participants.items() if i.role == "collaborator"]
        if self.psi_multiparty and len(collaborators) >= 2:
            session = MultipartyCollaboratorSession(
                ids,
                self._psi_header,
                node_id=self.state.node_id,
                task_id=self.state.task_id,
                collaborators=collaborators,
                timeout=timeout,
                peer=f"host '{host.node_id}'",
                check_header=self._psi_header_check(host.node_id),
            )
            return self._serve_psi(session, timeout)
        if self.psi_engine is not None:
            session = EngineCollaboratorSession(
                ids,
                self.psi_engine,
                self._psi_header,
                node_id=self.state.node_id,
                timeout=timeout,
                peer=f"host '{host.node_id}'",
                peer_host=self._address_host(host.node_id),
            )
            return self._serve_psi(session, timeout)
        with PsiPool() as pool:
            session = CollaboratorPsiSession(
                ids, pool, self._psi_header, peer=f"host '{host.node_id}'"
            )
            return self._serve_psi(session, timeout)

    def _serve_psi(
        self,
        session: CollaboratorPsiSession | EngineCollaboratorSession | MultipartyCollaboratorSession,
        timeout: float,
    ) -> set[str]:
        self.state.psi_session = session
        self.state.psi_ready.set()
        try:
            final = session.wait_result(timeout, cancel=self.state.abort)
        except (PsiError, TimeoutError) as exc:
            raise TaskFailed(self.state.abort.reason or str(exc)) from None
        finally:
            session.close()
        self._peer_psi_size(getattr(session, "peer_size", None) or 0)
        return final

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._count_channels()
