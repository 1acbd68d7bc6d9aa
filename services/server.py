"""Composition root of the coordinator: settings → store, lifecycle, servicer, gRPC server,
deadline ticker, metrics endpoint; and the `heteronn coordinator` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from heteronn.v1 import coordinator_pb2_grpc
from services.authz import CallerPolicy
from services.broadcast import CommandHub, WatchSlots
from services.domain import TaskLimits
from services.lifecycle import Lifecycle
from services.metrics import CoordinatorMetrics
from services.servicer import CoordinatorServicer
from services.store import InMemoryTaskStore, SqliteTaskStore, TaskStore
from wire import limits
from wire.config_file import settings_data, settings_error
from wire.grpc_factory import start_aio_server
from wire.metrics import RpcMetrics
from wire.tls import TlsSettings

log = logging.getLogger("heteronn.coordinator")
SERVICE_NAME = "heteronn.v1.CoordinatorService"


class CoordinatorSettings(BaseSettings):
    """Coordinator configuration; every field can be set as HETERONN_COORDINATOR_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="HETERONN_COORDINATOR_")

    listen: str = Field(
        "127.0.0.1:50051",
        description="host:port to bind; port 0 picks a free one. Loopback by default: give "
        "0.0.0.0:50051 (or an interface's address) to serve other machines",
    )
    db: str = Field(
        "coordinator.db",
        description="SQLite file holding the tasks (':memory:' keeps them in memory only)",
    )
    metrics_port: int | None = Field(
        None, description="Prometheus /metrics port; unset: no endpoint, 0: a free port"
    )
    metrics_host: str = Field("0.0.0.0", description="address the /metrics endpoint binds")
    advertise: str | None = Field(
        None, description="how nodes reach this coordinator, quoted in error messages"
    )
    tick_interval_s: float = Field(0.2, gt=0, description="how often deadlines are checked")
    min_liveness_s: float = Field(
        3.0,
        ge=0,
        description="a node is declared dead after max(schedule_timeout, this) "
        "seconds without a heartbeat; nodes beat every ~1 s, so less would misfire",
    )
    max_workers: int = Field(
        32, ge=4, description="threads serving unary calls (join, report, heartbeat, ...); "
        "WatchTask streams need none"
    )
    tls_ca_file: Path | None = Field(None, description="CA that signs every node's certificate")
    tls_cert_file: Path | None = Field(None, description="the coordinator's certificate")
    tls_key_file: Path | None = Field(None, description="the coordinator's private key")
    tls_pins: dict[str, str] = Field(
        default_factory=dict,
        description="per certificate name (node ids, operators): 'sha256:<hex>' of its "
        "certificate or a PEM file of the CA(s) that may issue it; every name needs one when "
        "tls_ca_file holds several CAs",
    )
    plaintext: bool = Field(
        False, description="must be true to serve without TLS (anyone reaching the port "
        "is then an operator); for local demos and tests only"
    )
    reflection: bool = Field(
        False, description="serve gRPC server reflection, so grpcurl-style tools can list "
        "the services and fetch their descriptors"
    )
    max_participants: int = Field(limits.MAX_PARTICIPANTS, ge=2, description="per task")
    max_tasks: int = Field(
        limits.MAX_TASKS, ge=1, description="tasks kept, ended ones included; CreateTask "
        "answers RESOURCE_EXHAUSTED beyond it"
    )
    retention_s: float = Field(
        limits.RETENTION_S, ge=0, description="ended tasks are deleted this long after they "
        "ended; 0 keeps them until DeleteTask"
    )
    unjoined_expiry_s: float = Field(
        limits.UNJOINED_EXPIRY_S, gt=0, description="a task nobody joins fails this long "
        "after its creation"
    )
    max_watches_per_node: int = Field(
        limits.MAX_WATCHES_PER_NODE, ge=1, description="open WatchTask streams per task and "
        "node (or reader)"
    )
    max_watches: int = Field(limits.MAX_WATCHES, ge=1, description="open WatchTask streams")
    operators: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["operator"],
        description="certificate names (CN or SAN) allowed to create and cancel tasks and to "
        "read every task under mutual TLS; a comma-separated list in the environment",
    )

    @field_validator("operators", mode="before")
    @classmethod
    def _split_operators(cls, value: Any) -> Any:
        """`operator,ops-bot` from the environment or the command line; a JSON list works too."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _tls_or_plaintext(self) -> CoordinatorSettings:
        if not self.tls().enabled and not self.plaintext:
            raise ValueError(
                "no TLS certificates configured: set tls_ca_file, tls_cert_file and "
                "tls_key_file (--tls-ca/--tls-cert/--tls-key; `make certs` creates development "
                "ones), or pass --plaintext (plaintext = true) to serve unencrypted, with every "
                "caller an operator, on a trusted network"
            )
        return self

    def task_limits(self) -> TaskLimits:
        return TaskLimits(
            max_participants=self.max_participants,
            max_tasks=self.max_tasks,
            retention_s=self.retention_s,
            unjoined_expiry_s=self.unjoined_expiry_s,
        )

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> CoordinatorSettings:
        """Settings from a TOML file (its keys are the field names), the environment and
        `overrides` (command-line options); the command line wins, then the file."""
        return cls(**settings_data(config, overrides))

    def tls(self) -> TlsSettings:
        return TlsSettings(
            ca_file=self.tls_ca_file,
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            pins=self.tls_pins,
        )

    def policy(self) -> CallerPolicy:
        """Caller checks by certificate name; none without TLS (plaintext, local only)."""
        tls = self.tls()
        return CallerPolicy(self.operators, enabled=tls.enabled, trust=tls.trust())


class RunningCoordinator:
    """A started coordinator; `port` is the bound gRPC port, `address` host:port."""

    def __init__(self, settings: CoordinatorSettings, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.hub = CommandHub()
        self.store: TaskStore = (
            InMemoryTaskStore() if settings.db == ":memory:" else SqliteTaskStore(settings.db)
        )
        self.lifecycle = Lifecycle(
            self.store,
            self.hub.publish,
            observer=CoordinatorMetrics(self.registry),
            min_liveness_s=settings.min_liveness_s,
            limits=settings.task_limits(),
            forget=self.hub.forget,
        )
        watches = WatchSlots(settings.max_watches_per_node, settings.max_watches)
        self.servicer = servicer = CoordinatorServicer(
            self.lifecycle, self.hub, settings.policy(), watches
        )

        def register(server: grpc.aio.Server) -> list[str]:
            coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        rpc_metrics = RpcMetrics(self.registry, "coordinator", "coordinator")
        self._server = start_aio_server(
            settings.listen,
            register,
            tls=settings.tls(),
            interceptors=[rpc_metrics.aio_server_interceptor()],
            max_workers=settings.max_workers,
            reflection_enabled=settings.reflection,
            max_receive_bytes=limits.COORDINATOR_MAX_REQUEST_BYTES,
        )
        self.port = self._server.port
        host = settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        self.lifecycle.address = settings.advertise or self.address
        self.metrics_port: int | None = None
        self._metrics_server = None
        if settings.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                settings.metrics_port, addr=settings.metrics_host, registry=self.registry
            )
            self.metrics_port = self._metrics_server.server_port
        self._stopped = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick_loop, args=(settings.tick_interval_s,), name="deadlines", daemon=True
        )
        self._ticker.start()
        log.info(
            "coordinator listening on %s (db %s, metrics port %s)",
            self.address,
            settings.db,
            self.metrics_port,
        )

    def _tick_loop(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                self.lifecycle.tick()
            except Exception:  # a bug in one tick must not stop deadline enforcement
                log.exception("deadline check failed")

    def drain(self, timeout: float) -> bool:
        """Wait (bounded) until every watch stream has ended, i.e. every node has received
        its task's terminal command; an embedding process calls this before `stop`."""
        deadline = time.monotonic() + timeout
        while self.servicer.active_watchers > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls, end every watch stream, close the store."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._ticker.join()
        self.hub.close()
        self._server.stop(grace)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.store.close()

    def wait(self) -> None:
        self._server.wait()


def start_coordinator(
    settings: CoordinatorSettings, registry: CollectorRegistry | None = None
) -> RunningCoordinator:
    return RunningCoordinator(settings, registry)


def main(argv: list[str] | None = None) -> int:
    """`heteronn coordinator ...`: serve until SIGTERM/SIGINT, then stop gracefully."""
    parser = argparse.ArgumentParser(prog="heteronn coordinator", description=__doc__)
    parser.add_argument(
        "--listen", help="host:port to bind (default 127.0.0.1:50051; 0.0.0.0:50051 for every "
        "interface)"
    )
    parser.add_argument("--db", help="SQLite file for task state (default coordinator.db)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    parser.add_argument("--advertise", help="address nodes use to reach this coordinator")
    parser.add_argument("--tls-ca", dest="tls_ca_file", help="CA bundle (mutual TLS)")
    parser.add_argument("--tls-cert", dest="tls_cert_file", help="certificate (mutual TLS)")
    parser.add_argument("--tls-key", dest="tls_key_file", help="private key (mutual TLS)")
    parser.add_argument(
        "--operators",
        help="comma-separated certificate names allowed to create/cancel tasks (mTLS only; "
        "default: operator)",
    )
    parser.add_argument(
        "--plaintext", action="store_true", default=None,
        help="serve without TLS, every caller an operator (trusted networks and demos only)",
    )
    parser.add_argument(
        "--reflection", action="store_true", default=None, help="serve gRPC server reflection"
    )
    parser.add_argument(
        "--config", type=Path, default=os.environ.get("HETERONN_COORDINATOR_CONFIG") or None,
        help="TOML file with coordinator settings (default: $HETERONN_COORDINATOR_CONFIG)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    skip = ("log_level", "config")
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    try:
        settings = CoordinatorSettings.load(args.config, **overrides)
        running = start_coordinator(settings)
    except (ValueError, OSError) as err:
        print(f"heteronn coordinator: {settings_error(err)}", file=sys.stderr)
        return 2
    print(f"heteronn coordinator listening on {running.address}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    log.info("signal received; stopping")
    running.stop(grace=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
