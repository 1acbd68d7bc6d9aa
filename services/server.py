"""Composition root of the coordinator: settings → store, lifecycle, servicer, gRPC server,
deadline ticker, metrics endpoint; and the `heteronn coordinator` command."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from heteronn.v1 import coordinator_pb2_grpc
from services.authz import CallerPolicy
from services.broadcast import CommandHub
from services.lifecycle import Lifecycle
from services.metrics import CoordinatorMetrics
from services.servicer import CoordinatorServicer
from services.store import InMemoryTaskStore, SqliteTaskStore, TaskStore
from wire.config_file import settings_data, settings_error
from wire.grpc_factory import start_server
from wire.metrics import RpcMetrics
from wire.tls import TlsSettings

log = logging.getLogger("heteronn.coordinator")
SERVICE_NAME = "heteronn.v1.CoordinatorService"


class CoordinatorSettings(BaseSettings):
    """Coordinator configuration; every field can be set as HETERONN_COORDINATOR_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="HETERONN_COORDINATOR_")

    listen: str = Field("0.0.0.0:50051", description="host:port to bind; port 0 picks a free one")
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
        256, ge=8, description="gRPC worker threads; every watching node holds one"
    )
    tls_ca_file: Path | None = Field(None, description="CA that signs every node's certificate")
    tls_cert_file: Path | None = Field(None, description="the coordinator's certificate")
    tls_key_file: Path | None = Field(None, description="the coordinator's private key")
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

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> CoordinatorSettings:
        """Settings from a TOML file (its keys are the field names), the environment and
        `overrides` (command-line options); the command line wins, then the file."""
        return cls(**settings_data(config, overrides))

    def tls(self) -> TlsSettings:
        return TlsSettings(
            ca_file=self.tls_ca_file, cert_file=self.tls_cert_file, key_file=self.tls_key_file
        )

    def policy(self) -> CallerPolicy:
        """Caller checks by certificate name; none without TLS (plaintext, local only)."""
        return CallerPolicy(self.operators, enabled=self.tls().enabled)


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
        )
        self.servicer = servicer = CoordinatorServicer(self.lifecycle, self.hub, settings.policy())

        def register(server: grpc.Server) -> list[str]:
            coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
            return [SERVICE_NAME]

        rpc_metrics = RpcMetrics(self.registry, "coordinator", "coordinator")
        self._server = start_server(
            settings.listen,
            register,
            tls=settings.tls(),
            interceptors=[rpc_metrics.server_interceptor()],
            max_workers=settings.max_workers,
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
        self._server.grpc_server.wait_for_termination()


def start_coordinator(
    settings: CoordinatorSettings, registry: CollectorRegistry | None = None
) -> RunningCoordinator:
    return RunningCoordinator(settings, registry)


def main(argv: list[str] | None = None) -> int:
    """`heteronn coordinator ...`: serve until SIGTERM/SIGINT, then stop gracefully."""
    parser = argparse.ArgumentParser(prog="heteronn coordinator", description=__doc__)
    parser.add_argument("--listen", help="host:port to bind (default 0.0.0.0:50051)")
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
    parser.add_argument("--config", type=Path, help="TOML file with coordinator settings")
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
