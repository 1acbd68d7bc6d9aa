"""The PartyNode gRPC servicer: checks who is talking and what they sent, then hands the
decoded message to the runtime's inbox. It knows nothing about models."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.runtime.links import AbortSignal
from party_node.transport.node_state import NodeState
from party_node.transport.serde import message_from_payload
from wire.chunking import payload_from_chunks
from wire.tensor_codec import TensorDecodeError

log = logging.getLogger("heteronn")

#: How long an early message waits for this node to finish joining.
_READY_WAIT_S = 10.0
#: How long the host's PSI call may wait for this node's load_local_ids().
_PSI_WAIT_S = 600.0


def _wait(event: threading.Event, abort: AbortSignal, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not event.wait(0.2):
        if abort.is_set() or time.monotonic() > deadline:
            return False
    return True


def _tls_identities(context: grpc.ServicerContext) -> set[str]:
    """Names in the caller's verified certificate (empty without mutual TLS)."""
    auth = context.auth_context()
    names = auth.get("x509_subject_alternative_name", []) + auth.get("x509_common_name", [])
    return {n.decode() if isinstance(n, bytes) else n for n in names}


class PartyNodeServicer(party_node_pb2_grpc.PartyNodeServicer):
    def __init__(self, state: NodeState):
        self.state = state

    def _accept(
        self,
        chunks: Iterator[common_pb2.PayloadChunk],
        context: grpc.ServicerContext,
        sender_role: str,
        rpc: str,
    ) -> common_pb2.Ack:
        st = self.state
        try:
            payload = payload_from_chunks(chunks)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc}: {exc}")
        h = payload.header
        if h.task_id != st.task_id:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node '{st.node_id}' runs task '{st.task_id}', not '{h.task_id}'",
            )
        if not st.wait_ready(_READY_WAIT_S):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"node '{st.node_id}' has not joined yet")
        peer = st.participants.get(h.sender)
        if peer is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"'{h.sender}' is not a participant of task '{st.task_id}'",
            )
        identities = _tls_identities(context)
        if identities and h.sender not in identities:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the TLS certificate of this caller names {sorted(identities)}, but the message "
                f"claims to come from '{h.sender}'",
            )
        if peer.role != sender_role:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{rpc} is for messages from a {sender_role}; '{h.sender}' is the {peer.role}",
            )
        try:
            message = message_from_payload(payload)
        except TensorDecodeError as exc:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{peer.role} '{h.sender}' sent a bad tensor in {h.kind} (round {h.round} "
                f"batch {h.batch}): {exc}",
            )
        st.inbox.put(h.sender, message)
        return common_pb2.Ack()

    def FeatureExchange(self, request_iterator, context):
        return self._accept(request_iterator, context, "collaborator", "FeatureExchange")

    def GradientReturn(self, request_iterator, context):
        return self._accept(request_iterator, context, "host", "GradientReturn")

    def Psi(self, request_iterator, context):
        st = self.state
        # The host may call before this node has loaded its ids; wait for that (bounded).
        if not (st.wait_ready(_READY_WAIT_S) and _wait(st.psi_ready, st.abort, _PSI_WAIT_S)):
            context.abort(grpc.StatusCode.UNAVAILABLE, f"node '{st.node_id}' is not ready for PSI")
        yield from st.psi_session.handle(request_iterator, context)

    def GetStatus(self, request, context):
        st = self.state
        return party_node_pb2.NodeStatus(
            node_id=st.node_id, task_id=st.task_id, phase=st.phase, round=st.round
        )


SERVICE_NAME = party_node_pb2.DESCRIPTOR.services_by_name["PartyNode"].full_name
