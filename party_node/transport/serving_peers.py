"""The host's clients to its collaborators' serving nodes: one channel each, pinned to the
collaborator's node id in its certificate (as in training), a deadline on every call, and
failures turned into errors that name the collaborator and its address."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from heteronn.v1 import party_node_pb2_grpc, serving_pb2, serving_pb2_grpc
from party_node.errors import (
    BadMessage,
    BundleError,
    NodeError,
    PeerRefused,
    PeerTimedOut,
    PeerUnavailable,
)
from party_node.serving.bundle import Bundle, differences, short, summary
from party_node.serving.hooks import FeatureRows
from party_node.transport.serving_serde import describe_from_proto, rows_from_embed_response
from wire.grpc_factory import open_channel
from wire.tls import TlsSettings

#: A collaborator that restarts is dialled again within a second or two, not gRPC's default
#: minutes of back-off: serving resumes as soon as it is back.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

#: What a collaborator's refusal means for the host's caller: refusals of the host itself
#: (its certificate, its model) are the host's configuration, not the caller's fault.
_REFUSAL_CODES = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    grpc.StatusCode.INTERNAL: "INTERNAL",
    grpc.StatusCode.PERMISSION_DENIED: "FAILED_PRECONDITION",
    grpc.StatusCode.UNAUTHENTICATED: "FAILED_PRECONDITION",
    grpc.StatusCode.FAILED_PRECONDITION: "FAILED_PRECONDITION",
}


class GrpcCollaborator:
    """One collaborator's serving node (a `ProjectionSource` in plain mode)."""

    def __init__(
        self,
        node_id: str,
        feature_key: str,
        address: str,
        host_id: str,
        model_id: str,
        width: int,
        tls: TlsSettings | None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        self.node_id, self.feature_key, self.address = node_id, feature_key, address
        self.host_id, self.model_id, self.width = host_id, model_id, width
        self.channel = open_channel(
            address, tls, interceptors, server_name=node_id, extra_options=RECONNECT_OPTIONS
        )
        self.stub = serving_pb2_grpc.InferencePeerServiceStub(self.channel)
        #: Batch prediction's PSI runs over this node's PartyNodeService.Psi.
        self.psi_stub = party_node_pb2_grpc.PartyNodeServiceStub(self.channel)

    def describe(self) -> str:
        return f"collaborator '{self.node_id}' at {self.address}"

    def error(self, exc: grpc.RpcError, what: str) -> NodeError:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PeerTimedOut(f"{self.describe()} did not answer {what} within the deadline")
        if code in _REFUSAL_CODES:
            return PeerRefused(
                f"{self.describe()} refused {what}: {code.name}: {details}", _REFUSAL_CODES[code]
            )
        name = code.name if code is not None else "ERROR"
        return PeerUnavailable(
            f"{self.describe()} is unavailable ({name}: {details}); check that its serving "
            "node runs and the network between us"
        )

    def read(self, ids: Sequence[str], deadline: float, batch_id: str = "") -> FeatureRows:
        """This collaborator's embeddings of `ids` (Embed), by `deadline` (time.monotonic())."""
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise PeerTimedOut(f"no time was left to ask {self.describe()}")
        request = serving_pb2.EmbedRequest(
            model_id=self.model_id, sender=self.host_id, ids=ids, batch_id=batch_id
        )
        try:
            response = self.stub.Embed(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.error(exc, "Embed") from None
        try:
            return rows_from_embed_response(response, len(ids), self.width, self.describe())
        except BadMessage as exc:
            raise PeerRefused(exc.message, "INTERNAL") from None

    def describe_model(self, timeout: float) -> dict[str, Any]:
        """DescribeModel, waiting up to `timeout` for the collaborator to come up."""
        try:
            msg = self.stub.DescribeModel(
                serving_pb2.DescribeModelRequest(sender=self.host_id),
                timeout=timeout,
                wait_for_ready=True,
            )
        except grpc.RpcError as exc:
            raise self.error(exc, "DescribeModel") from None
        return describe_from_proto(msg)

    def close(self) -> None:
        self.channel.close()


def check_agreement(bundle: Bundle, peer: GrpcCollaborator, theirs: dict[str, Any]) -> None:
    """Refuse to serve with a collaborator whose bundle is of another model, naming both
    parties and what differs."""
    if theirs["model_id"] == bundle.model_id and theirs["node_id"] == peer.node_id:
        return
    mine = summary(bundle)
    diffs = differences(mine, theirs) or [f"model id {short(bundle.model_id)} vs "
                                          f"{short(theirs['model_id'])}"]
    raise BundleError(
        f"host '{bundle.node_id}' serves {bundle.describe()} but {peer.describe()} serves model "
        f"{short(theirs['model_id'])} (task '{theirs['task_id']}', round "
        f"{theirs['final_round']}, {theirs['mode']}): {'; '.join(diffs)} — start every party "
        "with the bundle of the same finished task"
    )
