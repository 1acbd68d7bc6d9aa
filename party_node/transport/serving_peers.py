"""The host's clients to its collaborators' serving nodes: one channel each, pinned to the
collaborator's node id in its certificate (as in training), a deadline on every call, and
failures turned into errors that name the collaborator and its address."""

from __future__ import annotations

import threading
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
from party_node.secure import SecureProtocolError
from party_node.serving.bundle import Bundle, differences, short, summary
from party_node.serving.hooks import FeatureRows
from party_node.serving.secure import HostSecureLayers, decrypt_projection
from party_node.transport.serving_serde import (
    describe_from_proto,
    message_from_proto,
    message_to_proto,
    rows_from_embed_response,
)
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


class SecureGrpcCollaborator(GrpcCollaborator):
    """A collaborator in secure mode (a `ProjectionSource`): a session holding our keys and
    Enc_H(U) there, then per batch SecureEmbed and the decryption of z = X·W here."""

    def __init__(self, *args: Any, layers: HostSecureLayers, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layers = layers
        self._session: tuple[str, Any] | None = None
        self._lock = threading.Lock()

    def open_session(self, timeout: float) -> tuple[str, Any]:
        request = serving_pb2.OpenSecureSessionRequest(
            model_id=self.model_id,
            sender=self.host_id,
            keys=message_to_proto(self.layers.session_blobs(self.feature_key)),
        )
        try:
            reply = self.stub.OpenSecureSession(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.error(exc, "OpenSecureSession") from None
        layer = self.layers.layer(self.feature_key, message_from_proto(reply.keys))
        with self._lock:
            if self._session is not None:
                self._session[1].close()
            self._session = (reply.session_id, layer)
        return self._session

    def session(self, timeout: float) -> tuple[str, Any]:
        with self._lock:
            session = self._session
        return session if session is not None else self.open_session(timeout)

    def read(self, ids: Sequence[str], deadline: float, batch_id: str = "") -> FeatureRows:
        for attempt in (1, 2):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise PeerTimedOut(f"no time was left to ask {self.describe()}")
            session_id, layer = self.session(timeout)
            request = serving_pb2.SecureEmbedRequest(
                model_id=self.model_id, sender=self.host_id, session_id=session_id, ids=ids,
                batch_id=batch_id,
            )
            try:
                reply = self.stub.SecureEmbed(request, timeout=deadline - time.monotonic())
                break
            except grpc.RpcError as exc:
                gone = isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND
                if not gone or attempt == 2:
                    raise self.error(exc, "SecureEmbed") from None
                with self._lock:  # it restarted: a new session, once
                    if self._session is not None and self._session[0] == session_id:
                        self._session = None
        found = list(reply.found)
        if len(found) != len(ids):
            raise PeerRefused(f"{self.describe()} answered {len(found)} flags for "
                              f"{len(ids)} ids", "INTERNAL")
        try:
            z = decrypt_projection(layer, message_from_proto(reply.step), sum(found))
        except (SecureProtocolError, BadMessage) as exc:
            raise PeerRefused(
                f"{self.describe()} sent a secure forward that does not check: {exc}", "INTERNAL"
            ) from None
        return FeatureRows(found, z)

    def close(self) -> None:
        if self._session is not None:
            self._session[1].close()
        super().close()
