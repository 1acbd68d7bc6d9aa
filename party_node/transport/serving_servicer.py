"""The serving node's gRPC servicers: the host's public PredictionService and a
collaborator's InferencePeerService. They translate calls into the handlers' checks and the
serving objects' work, and `NodeError`s into status codes (counted by reason)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from heteronn.v1 import serving_pb2, serving_pb2_grpc
from party_node.errors import DeadlineExpired, HookFailed, ModelMismatch, NodeError
from party_node.secure import SecureProtocolError
from party_node.serving.bundle import Bundle
from party_node.serving.collaborator import CollaboratorServing
from party_node.serving.hooks import FeatureRows
from party_node.transport.serving_handler import PeerCall, PeerCallHandler, PredictHandler, admitted
from party_node.transport.serving_serde import (
    describe_to_proto,
    message_from_proto,
    message_to_proto,
    predict_response,
    rows_to_embed_response,
)
from wire.peer_auth import Trust, tls_identities
from wire.serving_metrics import ServingMetrics
from wire.status_error import abort_with

log = logging.getLogger("heteronn")
T = TypeVar("T")

PREDICTION_SERVICE = serving_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
PEER_SERVICE = serving_pb2.DESCRIPTOR.services_by_name["InferencePeerService"].full_name


def answer(
    context: grpc.ServicerContext, metrics: ServingMetrics, rpc: str, fn: Callable[[], T]
) -> T:
    """Run `fn`; a NodeError becomes its status code and is counted under its reason."""
    try:
        return fn()
    except NodeError as err:
        metrics.failed(rpc, err.reason)
        log.info("%s refused: %s: %s", rpc, err.code, err.message)
        abort_with(context, err)


class PredictionServicer(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self, handler: PredictHandler, bundle: Bundle, output_width: int, metrics: ServingMetrics
    ) -> None:
        self.handler = handler
        self.bundle = bundle
        self.output_width = output_width
        self.metrics = metrics

    def Predict(self, request, context):
        started = time.perf_counter()

        def run() -> Any:
            h = self.handler
            with admitted(h.gate, h.where):
                ids = h.check(request.ids)
                result = h.predict(ids, h.deadline(context.time_remaining()))
            return predict_response(self.bundle.model_id, ids, result)

        response, not_found = answer(context, self.metrics, "Predict", run)
        n = len(response.predictions)
        self.metrics.answered("Predict", time.perf_counter() - started, n - not_found, not_found)
        return response

    def GetModel(self, request, context):
        m = self.bundle.manifest
        host = self.bundle.host
        return serving_pb2.GetModelResponse(
            model_id=self.bundle.model_id,
            task_id=m["task_id"],
            final_round=int(m["final_round"]),
            mode=self.bundle.mode,
            output_width=self.output_width,
            parties=[host, *sorted(p["node_id"] for p in self.bundle.collaborators)],
        )


class InferencePeerServicer(serving_pb2_grpc.InferencePeerServiceServicer):
    """A collaborator's side. `secure` (party_node.serving.secure.CollaboratorSessions) is set
    for a secure bundle: then only OpenSecureSession/SecureEmbed answer, never Embed."""

    def __init__(
        self,
        handler: PeerCallHandler,
        serving: CollaboratorServing,
        metrics: ServingMetrics,
        secure: Any = None,
        trust: Trust | None = None,
    ) -> None:
        self.handler = handler
        self.serving = serving
        self.metrics = metrics
        self.secure = secure
        #: Which certificates may carry which names (settings tls_pins).
        self.trust = trust

    def DescribeModel(self, request, context):
        def run() -> Any:
            self.handler.check_caller(
                request.sender, frozenset(tls_identities(context, self.trust)), "DescribeModel"
            )
            return describe_to_proto(self.serving.describe())

        return answer(context, self.metrics, "DescribeModel", run)

    def _embed(
        self, rpc: str, request: Any, context: grpc.ServicerContext, secure: bool,
        respond: Callable[[FeatureRows], Any],
    ) -> Any:
        """Check, read this party's rows, answer: the path Embed and SecureEmbed share."""
        started = time.perf_counter()
        call = PeerCall(
            rpc, request.sender, request.model_id, request.ids, request.batch_id,
            frozenset(tls_identities(context, self.trust)),
        )

        def run() -> Any:
            h = self.handler
            with admitted(h.gate, h.where):
                ids = h.admit(call)
                if secure != (self.secure is not None):
                    raise ModelMismatch(
                        f"{h.where} serves a {'secure' if self.secure else 'plain'} bundle; "
                        f"{rpc} is for {'secure' if secure else 'plain'} ones"
                    )
                if secure:
                    self.secure.check(request.session_id)
                _check_time(context, h.where)
                rows = self.serving.features(call.sender, rpc, ids, call.batch_id)
                return respond(rows), rows

        response, rows = answer(context, self.metrics, rpc, run)
        self.metrics.batch_ids.labels(rpc=rpc).observe(len(rows.found))
        self.metrics.answered(
            rpc, time.perf_counter() - started, rows.count, len(rows.found) - rows.count
        )
        return response

    def Embed(self, request, context):
        return self._embed("Embed", request, context, False, rows_to_embed_response)

    def SecureEmbed(self, request, context):
        def respond(rows: FeatureRows) -> Any:
            step = {}
            if rows.count:
                try:
                    step = self.secure.forward(request.session_id, rows.features)
                except SecureProtocolError as exc:
                    log.error("secure forward of %s: %s", self.handler.where, exc)
                    raise HookFailed(
                        f"{self.handler.where} could not run the secure forward (see its log)"
                    ) from None
            return serving_pb2.SecureEmbedResponse(found=rows.found, step=message_to_proto(step))

        return self._embed("SecureEmbed", request, context, True, respond)

    def OpenSecureSession(self, request, context):
        def run() -> Any:
            h = self.handler
            names = frozenset(tls_identities(context, self.trust))
            h.check_caller(request.sender, names, "OpenSecureSession")
            h.check_model(request.model_id)
            if self.secure is None:
                raise ModelMismatch(f"{h.where} serves a plain bundle; it opens no secure session")
            session_id, keys = self.secure.open(message_from_proto(request.keys))
            return serving_pb2.OpenSecureSessionResponse(
                session_id=session_id, keys=message_to_proto(keys)
            )

        return answer(context, self.metrics, "OpenSecureSession", run)


def _check_time(context: grpc.ServicerContext, where: str) -> None:
    left = context.time_remaining()
    if left is not None and left <= 0.001:
        raise DeadlineExpired(f"{where} received the call after its deadline had passed")
