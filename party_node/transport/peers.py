"""Clients to the other parties (the runtime's PeerLink over gRPC): one channel per peer,
payloads chunked, failures turned into messages that name the peer and its address."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.errors import TaskFailed
from party_node.psi import CollaboratorPsiSession, PsiError, PsiPool, run_host_psi
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.engine_session import EngineCollaboratorSession
from party_node.runtime.links import Message, Participant
from party_node.transport.node_state import NodeState
from party_node.transport.serde import message_to_payload
from wire.chunking import payload_to_chunks
from wire.grpc_factory import open_channel
from wire.tls import TlsSettings


class GrpcPeers:
    def __init__(
        self,
        state: NodeState,
        role: str,
        tls: TlsSettings | None,
        send_timeout: float,
        interceptors: Sequence[Any] = (),
        psi_engine: EngineOptions | None = None,
    ):
        """`psi_engine`: run PSI through the engine (spu) with these options; None runs
        the in-process ECDH protocol."""
        self.interceptors = list(interceptors)
        self.psi_engine = psi_engine
        self.state = state
        self.role = role
        self.tls = tls
        self.send_timeout = send_timeout
        self._channels: dict[str, grpc.Channel] = {}
        self.stubs: dict[str, party_node_pb2_grpc.PartyNodeServiceStub] = {}
        self.participants: dict[str, Participant] = {}

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

    def describe(self, peer: str) -> str:
        p = self.participants.get(peer)
        return f"{p.role} '{peer}' at {p.address}" if p else f"'{peer}'"

    def send(self, peer: str, message: Message) -> None:
        if self.state.abort.is_set():
            raise TaskFailed(self.state.abort.reason)
        payload = message_to_payload(message, self.state.task_id, self.state.node_id)
        stub = self.stubs[peer]
        if self.role == "host":
            method, chunk_type = stub.GradientReturn, party_node_pb2.GradientReturnRequest
        else:
            method, chunk_type = stub.FeatureExchange, party_node_pb2.FeatureExchangeRequest
        try:
            # No wait_for_ready: a dead peer must fail the send now, not after the timeout.
            method(payload_to_chunks(payload, chunk_type), timeout=self.send_timeout)
        except grpc.RpcError as exc:
            if self.state.abort.is_set():
                raise TaskFailed(self.state.abort.reason) from None
            raise TaskFailed(self._rpc_failure(peer, message.kind, exc)) from None

    def _rpc_failure(self, peer: str, what: str, exc: grpc.RpcError) -> str:
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
        return self.state.inbox.get(peer, timeout, self.describe(peer))

    def _psi_header(self) -> common_pb2.Header:
        return common_pb2.Header(task_id=self.state.task_id, sender=self.state.node_id, kind="psi")

    def _address_host(self, node_id: str) -> str:
        return self.participants[node_id].address.rpartition(":")[0]

    def psi_as_host(self, ids: Sequence[str], round_timeout: float) -> set[str]:
        stubs = {
            p: self.stubs[p] for p, info in self.participants.items() if info.role == "collaborator"
        }
        try:
            if self.psi_engine is not None:
                return run_host_engine_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    self.psi_engine,
                    round_timeout,
                    cancel=self.state.abort,
                    peer_hosts={name: self._address_host(name) for name in stubs},
                )
            with PsiPool() as pool:
                return run_host_psi(
                    stubs, ids, self._psi_header, pool, round_timeout, cancel=self.state.abort
                )
        except (PsiError, TimeoutError) as exc:
            raise TaskFailed(self.state.abort.reason or str(exc)) from None

    def psi_as_collaborator(self, ids: Sequence[str], timeout: float) -> set[str]:
        host = next(p for p in self.participants.values() if p.role == "host")
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
        self, session: CollaboratorPsiSession | EngineCollaboratorSession, timeout: float
    ) -> set[str]:
        self.state.psi_session = session
        self.state.psi_ready.set()
        try:
            return session.wait_result(timeout, cancel=self.state.abort)
        except (PsiError, TimeoutError) as exc:
            raise TaskFailed(self.state.abort.reason or str(exc)) from None
        finally:
            session.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
