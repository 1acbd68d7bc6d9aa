"""The one composition root of a party node: every way to run one (the seed's `_run` under
`mock_context`, `launch_task`, `simulate.run_local`, `heteronn node`) comes here to wire the
runtime to the world: node state, the peer-message handler and its servicer, the gRPC server,
the coordinator link, peer clients, metrics. Serving (`heteronn serve`, `launch_serving`,
`heteronn predict`, `batch_predict`) is wired here too. Nothing else builds these."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from party_node.errors import BundleError, ConfigError, NodeError, TaskFailed
from party_node.mock import current_mock
from party_node.psi.engine_rpc import EngineOptions
from party_node.runtime.links import AbortSignal
from party_node.runtime.outputs import atomic_write_bytes, output_dir
from party_node.runtime.task import RunSettings, TaskRuntime
from party_node.runtime.task import _check_ids as check_ids_from_user
from party_node.serving.audit import AuditLog
from party_node.serving.batch_job import BatchReport, run_batch
from party_node.serving.batching import DynamicBatcher
from party_node.serving.bundle import read_bundle
from party_node.serving.collaborator import CollaboratorServing
from party_node.serving.models import load_collaborator_model, load_host_model
from party_node.serving.predict import HostPrediction
from party_node.settings import NodeSettings, ServingSettings
from party_node.transport.control_link import CoordinatorLink
from party_node.transport.handler import Limits, PeerMessageHandler
from party_node.transport.monitoring import NodeObserver
from party_node.transport.node_state import NodeState
from party_node.transport.peers import GrpcPeers
from party_node.transport.servicer import SERVICE_NAME, PartyNodeServicer
from party_node.transport.serving_handler import PeerCallHandler, PredictHandler
from party_node.transport.serving_peers import GrpcCollaborator, check_agreement
from party_node.transport.serving_psi import BatchSessions, ServingPsiServicer, host_batch_psi
from party_node.transport.serving_servicer import (
    PEER_SERVICE,
    PREDICTION_SERVICE,
    InferencePeerServicer,
    PredictionServicer,
)
from services.client import CoordinatorClient, task_spec
from wire.grpc_factory import Server, start_server
from wire.metrics import Metrics, serve_metrics
from wire.peer_auth import PeerAuthInterceptor
from wire.serving_metrics import ServingMetrics

log = logging.getLogger("heteronn")


def run_node(scheduler: Any, settings: NodeSettings) -> dict[str, Any]:
    """Run one task to its end; returns the report, raises TaskFailed with the reason."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    if settings.training_mode is not None:
        scheduler.training_mode = settings.training_mode
    abort = AbortSignal()
    state = NodeState(
        node_id=settings.node_id,
        task_id=settings.task_id,
        role=scheduler._role,
        abort=abort,
        max_queued_bytes_per_sender=settings.max_queued_bytes_per_sender,
    )
    tls = settings.tls if settings.tls.enabled else None
    metrics = Metrics(CollectorRegistry(), settings.node_id, scheduler._role)
    own_calls = scheduler.calculation_timeout + scheduler.schedule_timeout
    handler = PeerMessageHandler(state, node_limits(settings, own_calls))
    server = start_node_server(handler, settings, metrics)
    endpoint = None
    if settings.metrics_port is not None:
        endpoint = serve_metrics(settings.metrics_port, metrics.registry)
    advertise = settings.advertise or default_advertise(settings.listen, server.port)
    control = CoordinatorLink(settings.coordinator, settings.task_id, settings.node_id, tls, abort)
    peers = GrpcPeers(
        state,
        scheduler._role,
        tls,
        send_timeout=scheduler.calculation_timeout,
        interceptors=[metrics.client_interceptor()],
        metrics=metrics,
        max_call_s=settings.max_call_s,
        psi_engine=psi_engine_options(settings, advertise),
    )
    run = RunSettings(
        node_id=settings.node_id,
        task_id=settings.task_id,
        workdir=settings.workdir,
        advertise=advertise,
        recover=settings.recover,
    )
    observer = NodeObserver(metrics, settings.task_id, state)
    try:
        return TaskRuntime(scheduler, control, peers, run, abort, observer).run()
    finally:
        control.close()
        peers.close()
        server.stop(grace=1.0)
        if endpoint is not None:
            endpoint.close()


def node_limits(settings: NodeSettings, own_call_s: float = 0.0) -> Limits:
    """What this node accepts from peers (node settings; defaults in wire.limits). A peer's
    call may last as long as this node's own calls may (`own_call_s`) if that is longer."""
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_payload_bytes_by_kind=dict(settings.max_payload_bytes_by_kind),
        max_queued_bytes_per_sender=settings.max_queued_bytes_per_sender,
        max_streams_per_sender=settings.max_streams_per_sender,
        max_call_s=max(settings.max_call_s, own_call_s),
    )


def start_node_server(
    handler: PeerMessageHandler, settings: NodeSettings, metrics: Metrics
) -> Server:
    """The node's PartyNodeService: servicer -> handler -> inbox, behind the peer
    authorisation (mutual TLS: only the task's participants get in) and metrics."""
    from heteronn.v1 import party_node_pb2_grpc

    state = handler.state
    tls = settings.tls if settings.tls.enabled else None
    trust = tls.trust() if tls is not None else None
    servicer = PartyNodeServicer(handler, trust)

    def register(server: Any) -> list[str]:
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    interceptors: list[Any] = [metrics.server_interceptor()]
    if tls is not None:
        allowed = lambda: state.known_participants(10.0)  # noqa: E731
        interceptors.insert(0, PeerAuthInterceptor(allowed, trust=trust))
    return start_server(
        settings.listen,
        register,
        tls=tls,
        interceptors=interceptors,
        reflection_enabled=settings.reflection,
    )


def run_mock(scheduler: Any, node_id: str, task_id: str, is_initiator: bool, recover: bool) -> None:
    """The seed's `_run` under `mock_context`: the initiator embeds the coordinator and
    publishes its address in the rendezvous folder; the others wait for it there."""
    env = current_mock()
    if env is None:
        raise ConfigError(
            "scheduler._run(...) must be called inside `with mock_context(id=..., nodes=[...]):`; "
            "for a real deployment use scheduler.launch_task(task_id=...)"
        )
    if env.node_id != node_id:
        raise ConfigError(f"_run(id={node_id!r}) differs from mock_context(id={env.node_id!r})")
    rendezvous = env.rendezvous(task_id)
    rendezvous.mkdir(parents=True, exist_ok=True)
    address_file = rendezvous / "coordinator.json"
    coordinator = None
    if is_initiator:
        coordinator = _start_mock_coordinator(scheduler, env.nodes, task_id, rendezvous, recover)
        address = coordinator.address
        atomic_write_bytes(
            address_file, json.dumps({"address": address, "pid": os.getpid()}).encode()
        )
    else:
        address = _wait_for_coordinator(address_file, scheduler.schedule_timeout)
    settings = NodeSettings(
        node_id=node_id,
        task_id=task_id,
        coordinator=address,
        listen="127.0.0.1:0",
        workdir=env.workdir,
        recover=recover,
        tls_plaintext=True,
    )
    try:
        run_node(scheduler, settings)
    finally:
        if coordinator is not None:
            address_file.unlink(missing_ok=True)
            # Keep serving until every party has heard how the task ended.
            coordinator.drain(timeout=max(5.0, scheduler.schedule_timeout))
            coordinator.stop(grace=1.0)


def start_embedded_coordinator(
    scheduler: Any, nodes: Sequence[str], task_id: str, db: str, recover: bool = False
) -> Any:
    """A coordinator inside this process on 127.0.0.1, with the task already created
    (timeouts from `scheduler`, normally the host's)."""
    from services.server import CoordinatorSettings, start_coordinator

    coordinator = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=db, plaintext=True)
    )
    spec = task_spec(
        task_id,
        nodes,
        schedule_timeout_s=scheduler.schedule_timeout,
        calculation_timeout_s=scheduler.calculation_timeout,
        recover=recover,
        mode="secure" if getattr(scheduler, "_secure", False) else "plain",
    )
    with CoordinatorClient(coordinator.address) as client:
        client.create_task(spec)
    return coordinator


def _start_mock_coordinator(
    scheduler: Any, nodes: Sequence[str], task_id: str, rendezvous: Path, recover: bool
) -> Any:
    (rendezvous / "coordinator.json").unlink(missing_ok=True)
    db = rendezvous / "coordinator.db"
    if not recover:  # a fresh task; recover keeps the failed attempt's state
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return start_embedded_coordinator(scheduler, nodes, task_id, str(db), recover)


def _wait_for_coordinator(address_file: Path, timeout: float) -> str:
    """The address the initiator published; a file left by an initiator that died (its
    process is gone) is not one: the restarted initiator will publish a new address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            published = json.loads(address_file.read_text())
            if _alive(int(published["pid"])):
                return str(published["address"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
        time.sleep(0.2)
    raise TaskFailed(
        f"no initiator published a coordinator in {address_file.parent} within "
        f"schedule_timeout={timeout:g} s; start the initiator (is_initiator=True) in the same "
        "working directory with the same task_id"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def psi_engine_options(settings: NodeSettings, advertise: str) -> EngineOptions | None:
    """Where this node's PSI engine listens and keeps its files; None for in-process ECDH."""
    if settings.psi_engine == "ecdh":
        return None
    listen_host = settings.listen.rsplit(":", 1)[0] or "0.0.0.0"
    return EngineOptions(
        engine=settings.psi_engine,
        folder=output_dir(settings.workdir, settings.node_id, settings.task_id) / "psi",
        listen_host=listen_host.strip("[]"),
        advertise_host=advertise.rsplit(":", 1)[0],
        port=settings.psi_link_port,
        recover=settings.recover,
    )


def default_advertise(listen: str, port: int) -> str:
    """Where peers dial when `advertise` is unset: the listen host when it names one address,
    127.0.0.1 when it is a wildcard (every interface; only loopback is a safe guess)."""
    host = listen.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


# ---- serving (docs/inference.md) -------------------------------------------------------------


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
    """A channel to every collaborator of the bundle, each checked to serve the same model."""
    peers = []
    try:
        for p in bundle.collaborators:
            address = settings.collaborators.get(p["node_id"])
            if not address:
                raise ConfigError(
                    f"the bundle's model needs collaborator '{p['node_id']}': set "
                    f"collaborators.{p['node_id']} = \"HOST:PORT\" of its serving node"
                )
            peer = GrpcCollaborator(
                p["node_id"],
                p["feature_key"],
                address,
                bundle.node_id,
                bundle.model_id,
                model.widths[p["feature_key"]],
                tls,
                [metrics.client_interceptor()],
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
    trust = tls.trust() if tls is not None else None
    servicer = InferencePeerServicer(handler, serving, metrics, trust=trust)
    psi = ServingPsiServicer(handler, sessions, trust)

    def register(server: Any) -> list[str]:
        serving_pb2_grpc.add_InferencePeerServiceServicer_to_server(servicer, server)
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(psi, server)
        return [PEER_SERVICE, SERVICE_NAME]

    # Only the model's host gets in (its certificate names its node id, as in training).
    interceptors = (
        [PeerAuthInterceptor(lambda: {bundle.host}, trust=trust)] if tls is not None else []
    )
    return register, interceptors, [sessions.close, audit.close]


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
