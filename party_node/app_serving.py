"""The serving half of the party node's composition root (`party_node.app` exports its entry
points): a party's serving node from its bundle (`heteronn serve`, `launch_serving`) and the
host's batch prediction (`heteronn predict`, `batch_predict`): bundle, models, hooks, the
collaborator links, batcher, handlers, servicers, server, metrics. Nothing else builds
these. See docs/inference.md."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from party_node.errors import BundleError, ConfigError, NodeError
from party_node.runtime.task import _check_ids as check_ids_from_user
from party_node.serving.audit import AuditLog
from party_node.serving.batch_job import BatchReport, run_batch
from party_node.serving.batching import DynamicBatcher
from party_node.serving.bundle import read_bundle
from party_node.serving.collaborator import CollaboratorServing
from party_node.serving.hooks import require_predict_feature
from party_node.serving.models import load_collaborator_model, load_host_model
from party_node.serving.predict import HostPrediction
from party_node.serving.secure import CollaboratorSessions, HostSecureLayers
from party_node.settings import ServingSettings
from party_node.transport.servicer import SERVICE_NAME
from party_node.transport.serving_handler import PeerCallHandler, PredictHandler
from party_node.transport.serving_peers import (
    GrpcCollaborator,
    SecureGrpcCollaborator,
    check_agreement,
)
from party_node.transport.serving_psi import BatchSessions, ServingPsiServicer, host_batch_psi
from party_node.transport.serving_servicer import (
    PEER_SERVICE,
    PREDICTION_SERVICE,
    InferencePeerServicer,
    PredictionServicer,
)
from wire.grpc_factory import start_server
from wire.metrics import serve_metrics
from wire.peer_auth import PeerAuthInterceptor
from wire.serving_metrics import ServingMetrics

log = logging.getLogger("heteronn")


class ServingNode:
    """A running serving node: `port` is bound; `stop()` ends it and everything it opened."""

    def __init__(self, server: Any, role: str, closers: Sequence[Any], endpoint: Any = None):
        self.server, self.role, self._closers, self._endpoint = server, role, closers, endpoint
        self.port = server.port
        self.metrics_port = endpoint.port if endpoint is not None else None

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace=grace)
        for close in self._closers:
            close()
        if self._endpoint is not None:
            self._endpoint.close()

    def wait(self) -> None:
        self.server.grpc_server.wait_for_termination()


def start_serving(scheduler: Any, settings: ServingSettings) -> ServingNode:
    """Start a party's serving node from its bundle (host: PredictionService; collaborator:
    InferencePeerService and batch PSI). Raises ConfigError/BundleError before listening when
    the bundle, the hooks or the collaborators' bundles are not right."""
    require_predict_feature(scheduler)  # before waiting on anyone: the user's fix is local
    bundle = read_bundle(settings.bundle, role=scheduler._role)
    if bundle.node_id != settings.node_id:
        raise BundleError(
            f"the bundle at {bundle.path} is node '{bundle.node_id}''s, this node is "
            f"'{settings.node_id}'; serve each party's own bundle under its own node id"
        )
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    tls = settings.tls if settings.tls.enabled else None
    metrics = ServingMetrics(CollectorRegistry(), settings.node_id, scheduler._role)
    build = _host_services if scheduler._role == "host" else _collaborator_services
    register, interceptors, closers = build(scheduler, bundle, settings, tls, metrics)
    limits = settings.limits
    try:
        server = start_server(
            settings.listen,
            register,
            tls=tls,
            interceptors=[metrics.server_interceptor(), *interceptors],
            max_workers=min(512, limits.max_calls_in_flight + 16),
            max_concurrent_rpcs=limits.max_calls_in_flight + 16,
            reflection_enabled=settings.reflection,
        )
    except BaseException:
        for close in closers:
            close()
        raise
    endpoint = None
    if settings.metrics_port is not None:
        endpoint = serve_metrics(settings.metrics_port, metrics.registry)
    log.info("serving %s as %s on port %d", bundle.describe(), scheduler._role, server.port)
    return ServingNode(server, scheduler._role, closers, endpoint)


def _host_services(
    scheduler: Any, bundle: Any, settings: ServingSettings, tls: Any, metrics: ServingMetrics
) -> tuple[Any, list[Any], list[Any]]:
    from heteronn.v1 import serving_pb2_grpc

    if settings.max_batch > settings.limits.max_embed_ids:
        raise ConfigError(
            f"max_batch={settings.max_batch} exceeds limits.max_embed_ids="
            f"{settings.limits.max_embed_ids}, the most ids a collaborator takes per call"
        )
    model = load_host_model(bundle)
    peers = connect_collaborators(bundle, model, settings, tls, metrics)
    prediction = HostPrediction(scheduler, bundle.node_id, model, peers, settings.batch_workers)
    batcher = DynamicBatcher(
        prediction.predict,
        settings.max_batch,
        settings.max_wait_ms / 1000.0,
        settings.batch_workers,
        settings.limits.max_queued_ids,
        observe=metrics.batch_ids.labels(rpc="Predict").observe,
    )
    handler = PredictHandler(settings.limits, batcher, bundle.node_id)
    servicer = PredictionServicer(handler, bundle, model.output_width, metrics)

    def register(server: Any) -> list[str]:
        serving_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        return [PREDICTION_SERVICE]

    interceptors = []
    if tls is not None and settings.predict_clients:
        clients = set(settings.predict_clients)
        interceptors.append(PeerAuthInterceptor(lambda: clients, trust=tls.trust()))
    closers = [batcher.stop, prediction.close, *(p.close for p in peers)]
    return register, interceptors, closers


def connect_collaborators(
    bundle: Any, model: Any, settings: ServingSettings, tls: Any, metrics: ServingMetrics
) -> list[Any]:
    """A channel to every collaborator of the bundle, each checked to serve the same model
    (and in secure mode holding a session with our keys and Enc_H(U))."""
    peers = []
    secure = HostSecureLayers(bundle, model.shares) if bundle.mode == "secure" else None
    try:
        for p in bundle.collaborators:
            address = settings.collaborators.get(p["node_id"])
            if not address:
                raise ConfigError(
                    f"the bundle's model needs collaborator '{p['node_id']}': set "
                    f"collaborators.{p['node_id']} = \"HOST:PORT\" of its serving node"
                )
            args = (p["node_id"], p["feature_key"], address, bundle.node_id, bundle.model_id,
                    model.widths[p["feature_key"]], tls, [metrics.client_interceptor()])
            peer = (
                GrpcCollaborator(*args) if secure is None
                else SecureGrpcCollaborator(*args, layers=secure)
            )
            peers.append(peer)
            try:
                theirs = peer.describe_model(settings.startup_timeout_s)
            except NodeError as exc:
                raise ConfigError(
                    f"cannot start: {exc.message} (waited {settings.startup_timeout_s:g} s; "
                    "start the collaborators' serving nodes first)"
                ) from None
            check_agreement(bundle, peer, theirs)
            if secure is not None:
                peer.open_session(settings.startup_timeout_s)
    except BaseException:
        for peer in peers:
            peer.close()
        raise
    return peers


def _collaborator_services(
    scheduler: Any, bundle: Any, settings: ServingSettings, tls: Any, metrics: ServingMetrics
) -> tuple[Any, list[Any], list[Any]]:
    from heteronn.v1 import party_node_pb2_grpc, serving_pb2_grpc

    model = load_collaborator_model(bundle)
    audit_path = settings.audit_log or (
        settings.workdir / settings.node_id / "serving" / "audit.jsonl"
    )
    audit = AuditLog(audit_path)
    serving = CollaboratorServing(scheduler, bundle, model, audit)
    sessions = BatchSessions(
        bundle.node_id, bundle.host, scheduler.load_local_ids, settings.limits, audit,
        bundle.model_id,
    )

    def refused(call: Any, reason: str) -> None:
        audit.record(call.sender, call.rpc, call.ids, 0, call.batch_id, reason, bundle.model_id)

    handler = PeerCallHandler(bundle, settings.limits, sessions.intersection, refused)
    secure = None
    if bundle.mode == "secure":
        lim = settings.limits
        secure = CollaboratorSessions(
            bundle, model.share, lim.max_secure_sessions, lim.session_idle_s
        )
    trust = tls.trust() if tls is not None else None
    servicer = InferencePeerServicer(handler, serving, metrics, secure, trust=trust)
    psi = ServingPsiServicer(handler, sessions, trust)

    def register(server: Any) -> list[str]:
        serving_pb2_grpc.add_InferencePeerServiceServicer_to_server(servicer, server)
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(psi, server)
        return [PEER_SERVICE, SERVICE_NAME]

    # Only the model's host gets in (its certificate names its node id, as in training).
    interceptors = (
        [PeerAuthInterceptor(lambda: {bundle.host}, trust=trust)] if tls is not None else []
    )
    closers = [sessions.close, audit.close, *([secure.close] if secure else [])]
    return register, interceptors, closers


def run_serving(scheduler: Any, settings: ServingSettings) -> None:
    """Serve until SIGTERM or Ctrl-C (`heteronn serve`, `launch_serving`)."""
    import signal
    import threading

    node = start_serving(scheduler, settings)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.stop(grace=2.0)


def run_batch_predict(
    scheduler: Any,
    settings: ServingSettings,
    output: Path,
    ids: Sequence[str] | None = None,
    batch_rows: int = 8192,
    batch_id: str | None = None,
    psi_timeout_s: float = 3600.0,
    progress: bool = True,
) -> BatchReport:
    """Batch prediction at the host against the collaborators' serving nodes (`heteronn
    predict`, `batch_predict`): `ids` (default: the host's load_local_ids()) through PSI,
    then predicted into `output`."""
    require_predict_feature(scheduler)
    bundle = read_bundle(settings.bundle, role="host")
    tls = settings.tls if settings.tls.enabled else None
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    metrics = ServingMetrics(CollectorRegistry(), settings.node_id, "host")
    model = load_host_model(bundle)
    peers = connect_collaborators(bundle, model, settings, tls, metrics)
    prediction = HostPrediction(scheduler, bundle.node_id, model, peers, workers=2)
    if ids is None:
        ids = check_ids_from_user(scheduler.load_local_ids())
    batch_id = batch_id or f"batch-{uuid.uuid4().hex[:16]}"
    stubs = {p.node_id: p.psi_stub for p in peers}

    def psi(distinct: list[str]) -> set[str]:
        return host_batch_psi(stubs, distinct, batch_id, bundle.node_id, psi_timeout_s)

    try:
        return run_batch(prediction, ids, psi, output, batch_id, batch_rows, progress=progress)
    finally:
        prediction.close()
        for peer in peers:
            peer.close()
