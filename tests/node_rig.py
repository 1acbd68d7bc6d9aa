"""A party node's server without a task around it, for tests of what it accepts from peers:
the real composition (app.start_node_server: servicer -> handler -> inbox, peer
authorisation, metrics) on 127.0.0.1, with the task's participants set by hand, and clients
that send what a peer (or an attacker) would."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import torch
from prometheus_client import CollectorRegistry

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.app import node_limits, start_node_server
from party_node.runtime.links import AbortSignal, Message, Participant
from party_node.settings import NodeSettings
from party_node.transport.handler import Limits, PeerMessageHandler
from party_node.transport.node_state import NodeState
from party_node.transport.peers import GrpcPeers
from party_node.transport.serde import message_to_payload
from party_node.transport.servicer import SERVICE_NAME, PartyNodeServicer
from wire.chunking import payload_to_chunks
from wire.grpc_factory import Server, open_channel, start_server
from wire.metrics import Metrics
from wire.tls import TlsSettings

TASK = "t"
PARTICIPANTS = (
    Participant("h", "host", "fk-h"),
    Participant("c1", "collaborator", "fk-c1"),
    Participant("c2", "collaborator", "fk-c2"),
)
RPC = {
    "FeatureExchange": party_node_pb2.FeatureExchangeRequest,
    "GradientReturn": party_node_pb2.GradientReturnRequest,
}


class CountingServicer(PartyNodeServicer):
    """The real servicer, counting the calls of each data RPC it receives."""

    DATA_RPCS = ("FeatureExchange", "FeatureExchangeOne", "GradientReturn", "GradientReturnOne")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: Counter[str] = Counter()
        for name in self.DATA_RPCS:
            setattr(self, name, self._counted(name, getattr(self, name)))

    def _counted(self, name: str, method: Any) -> Any:
        def call(request: Any, context: Any) -> Any:
            self.calls[name] += 1
            return method(request, context)

        return call


class PeerNode:
    """One party's server (servicer -> handler -> inbox) and its GrpcPeers, as app.py wires
    them."""

    def __init__(self, node_id: str, role: str, limits: Limits | None = None) -> None:
        self.state = NodeState(node_id, "t", role, AbortSignal())
        self.handler = PeerMessageHandler(self.state, limits)
        self.servicer = CountingServicer(self.handler)

        def register(server):
            party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(self.servicer, server)
            return [SERVICE_NAME]

        self.server = start_server("127.0.0.1:0", register)
        self.peers = GrpcPeers(self.state, role, None, send_timeout=30, handler=self.handler)
        self.address = f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.peers.close()
        self.server.stop(0)


@contextmanager
def peer_pair(host_limits: Limits | None = None) -> Iterator[tuple[PeerNode, PeerNode]]:
    """Host 'h' and collaborator 'c1' of task 't', connected to each other."""
    host, collab = PeerNode("h", "host", host_limits), PeerNode("c1", "collaborator")
    parts = (
        Participant("h", "host", "h", address=host.address),
        Participant("c1", "collaborator", "c1", address=collab.address),
    )
    host.peers.connect(parts)
    collab.peers.connect(parts)
    try:
        yield host, collab
    finally:
        host.close()
        collab.close()


def features(batch: int, rows: int = 4, kind: str = "train.features", round_no: int = 1) -> Message:
    return Message(kind, round_no, batch, tensors={"features": torch.full((rows, 2), batch)})


def gradient(batch: int) -> Message:
    return Message("train.gradient", 1, batch, tensors={"gradient": torch.full((4, 2), -batch)})


def host_answers(host: PeerNode, batches: int, delay_s: float = 0.0) -> threading.Thread:
    """The host's training thread: take each batch's features, answer with its gradient."""

    def run() -> None:
        for _ in range(batches):
            got = host.peers.receive("c1", 10)
            time.sleep(delay_s)
            host.peers.send("c1", gradient(got.batch), wait=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def collaborator_sends(
    collab: PeerNode, batches: int, after_send: Callable[[], bool] = lambda: True
) -> None:
    """The collaborator's exact-mode loop: each batch's features, then its gradient (checked;
    `after_send()` must hold as each send returns)."""
    for b in range(batches):
        collab.peers.send("h", features(b), wait=True, reply="train.gradient")
        assert after_send()
        got = collab.peers.receive("h", 10)
        assert (got.kind, got.batch, float(got.tensors["gradient"][0, 0])) == (
            "train.gradient",
            b,
            -b,
        )


def tls(certs: Path, name: str) -> TlsSettings:
    return TlsSettings(
        ca_file=certs / "ca.crt", cert_file=certs / f"{name}.crt", key_file=certs / f"{name}.key"
    )


@dataclass
class Rig:
    handler: PeerMessageHandler
    server: Server
    metrics: Metrics

    @property
    def state(self) -> NodeState:
        return self.handler.state

    def open_calls(self) -> int:
        """Data calls the handler has admitted and not yet closed."""
        return sum(self.handler._open.values())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stub(
        self, certs: Path | None = None, name: str = ""
    ) -> tuple[grpc.Channel, party_node_pb2_grpc.PartyNodeServiceStub]:
        creds = tls(certs, name) if certs is not None else None
        channel = open_channel(self.address, creds, server_name=self.state.node_id)
        return channel, party_node_pb2_grpc.PartyNodeServiceStub(channel)

    def stop(self) -> None:
        self.server.stop(0)


def start(
    node_id: str,
    certs: Path | None = None,
    joined: bool = True,
    psi_wait_s: float | None = None,
    **settings: Any,
) -> Rig:
    """The node `node_id` of task TASK (role from PARTICIPANTS), serving on a free port;
    with `certs`, mutual TLS with `certs/<node_id>.crt`."""
    creds = tls(certs, node_id) if certs is not None else None
    return start_with_tls(node_id, creds, joined, psi_wait_s, **settings)


def start_with_tls(
    node_id: str,
    creds: TlsSettings | None,
    joined: bool = True,
    psi_wait_s: float | None = None,
    **settings: Any,
) -> Rig:
    """`start` with explicit TLS settings (pins included); None: plaintext."""
    role = next(p.role for p in PARTICIPANTS if p.node_id == node_id)
    files: dict[str, Any] = {"tls_plaintext": True}
    if creds is not None:
        files = {
            "tls_ca_file": creds.ca_file,
            "tls_cert_file": creds.cert_file,
            "tls_key_file": creds.key_file,
            "tls_pins": dict(creds.pins),
        }
    node_settings = NodeSettings(
        node_id=node_id,
        task_id=TASK,
        coordinator="127.0.0.1:1",
        listen="127.0.0.1:0",
        **files,
        **settings,
    )
    state = NodeState(
        node_id=node_id,
        task_id=TASK,
        role=role,
        abort=AbortSignal(),
        max_queued_bytes_per_sender=node_settings.max_queued_bytes_per_sender,
    )
    if joined:
        state.set_participants(PARTICIPANTS)
    metrics = Metrics(CollectorRegistry(), node_id, role)
    limits = node_limits(node_settings)
    if psi_wait_s is not None:
        limits = replace(limits, psi_wait_s=psi_wait_s)
    handler = PeerMessageHandler(state, limits)
    server = start_node_server(handler, node_settings, metrics)
    return Rig(handler, server, metrics)


def payload(
    sender: str, kind: str = "train.features", rows: int = 4, task: str = TASK, batch: int = 0
) -> common_pb2.Payload:
    message = Message(kind=kind, round=1, batch=batch, tensors={"x": torch.ones(rows, 3)})
    return message_to_payload(message, task, sender)


def chunks(rpc: str, p: common_pb2.Payload, chunk_bytes: int = 1 << 20) -> list[Any]:
    return list(payload_to_chunks(p, RPC[rpc], chunk_bytes))


def stalling(first: Any, release: threading.Event) -> Iterator[Any]:
    """A request stream that sends its first chunk and then nothing until `release` (at most
    30 s): what a peer that announces a body and never sends it looks like."""
    yield first
    release.wait(30)
