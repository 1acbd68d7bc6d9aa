"""The one composition root of a party node: every way to run one (the seed's `_run` under
`mock_context`, `launch_task`, `simulate.run_local`, `heteronn node`) comes here to wire the
runtime to the world: node state, the peer-message handler and its servicer, the gRPC server,
the coordinator link, peer clients, metrics. Serving (`heteronn serve`, `launch_serving`,
`heteronn predict`, `batch_predict`) is wired by its half, `party_node.app_serving`, whose
entry points this module exports. Nothing else builds these."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from party_node.errors import ConfigError, TaskFailed
from party_node.mock import current_mock
from party_node.psi.engine_rpc import EngineOptions
from party_node.runtime.links import AbortSignal
from party_node.runtime.outputs import atomic_write_bytes, output_dir
from party_node.runtime.task import RunSettings, TaskRuntime
from party_node.settings import NodeSettings
from party_node.transport.control_link import CoordinatorLink
from party_node.transport.handler import Limits, PeerMessageHandler
from party_node.transport.monitoring import NodeObserver
from party_node.transport.node_state import NodeState
from party_node.transport.peers import GrpcPeers
from party_node.transport.servicer import SERVICE_NAME, PartyNodeServicer
from services.client import CoordinatorClient, task_spec
from wire.grpc_factory import Server, start_server
from wire.metrics import Metrics, serve_metrics
from wire.peer_auth import PeerAuthInterceptor

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
        psi_multiparty=settings.psi_engine == "multiparty",
        handler=handler,
    )
    run = RunSettings(
        node_id=settings.node_id,
        task_id=settings.task_id,
        workdir=settings.workdir,
        advertise=advertise,
        recover=settings.recover,
        agreement={"psi_engine": settings.psi_engine},
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
    """Where this node's PSI engine listens and keeps its files; None for in-process ECDH.
    "multiparty" runs the engine's RR22 when the task has one collaborator."""
    if settings.psi_engine == "ecdh":
        return None
    listen_host = settings.listen.rsplit(":", 1)[0] or "0.0.0.0"
    return EngineOptions(
        engine="spu-rr22" if settings.psi_engine == "multiparty" else settings.psi_engine,
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


# Serving mode has its own half of the composition root; its entry points are these.
from party_node.app_serving import (  # noqa: E402
    run_batch_predict,
    run_serving,
    start_serving,
)

__all__ = ["run_batch_predict", "run_mock", "run_node", "run_serving", "start_serving"]
