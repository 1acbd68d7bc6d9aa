"""Node settings for real deployments (`heteronn node`, `launch_task`) and for serving
(`heteronn serve`, `launch_serving`): pydantic settings read from ``HETERONN_NODE_*`` /
``HETERONN_SERVE_*`` env vars, an optional TOML file, and explicit arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from party_node.runtime.training_mode import parse_training_mode
from party_node.serving.limits import ServingLimits
from wire import limits
from wire.config_file import settings_data
from wire.tls import TlsSettings

#: Environment variable naming a node's TOML settings file when no --config is given.
CONFIG_ENV = "HETERONN_NODE_CONFIG"


class _PartySettings(BaseSettings):
    """What a party's settings share in both modes: its TLS files, or the explicit choice to
    run without them, and loading from a TOML file plus overrides."""

    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_plaintext: bool = Field(False, description="must be true to run without TLS certificates")
    tls_pins: dict[str, str] = Field(
        default_factory=dict,
        description="per peer name (node id, 'coordinator'): 'sha256:<hex>' of its certificate "
        "or a PEM file of the CA(s) that may issue it; every name needs one when tls_ca_file "
        "holds several CAs",
    )
    reflection: bool = Field(False, description="serve gRPC server reflection")

    @model_validator(mode="after")
    def _tls_or_plaintext(self) -> _PartySettings:
        if not self.tls.enabled and not self.tls_plaintext:
            raise ValueError(
                "no TLS certificates configured: set tls_ca_file, tls_cert_file and tls_key_file "
                "(`make certs` creates development ones), or set tls_plaintext = true to run "
                "unencrypted on a trusted network"
            )
        return self

    @property
    def tls(self) -> TlsSettings:
        return TlsSettings(
            ca_file=self.tls_ca_file,
            cert_file=self.tls_cert_file,
            key_file=self.tls_key_file,
            pins=self.tls_pins,
        )

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> Any:
        return cls(**settings_data(config, overrides))


class NodeSettings(_PartySettings):
    """Precedence: explicit arguments > TOML file > environment > defaults."""

    model_config = SettingsConfigDict(env_prefix="HETERONN_NODE_", extra="forbid")

    node_id: str = Field(..., description="this node's id, as listed in the task")
    task_id: str = Field(..., description="the task to join")
    coordinator: str = Field(..., description="HOST:PORT of the coordinator")
    listen: str = Field("0.0.0.0:50061", description="HOST:PORT this node's PartyNode serves on")
    advertise: str = Field(
        "", description="HOST:PORT peers dial; default: the listen host (0.0.0.0: 127.0.0.1)"
    )
    metrics_port: int | None = Field(None, description="Prometheus /metrics port; unset: off")
    workdir: Path = Field(Path("."), description="outputs go to <workdir>/<node_id>/<task_id>/")
    recover: bool = Field(False, description="resume from the last complete round")
    psi_engine: Literal["spu-rr22", "spu-ecdh", "ecdh", "multiparty"] = Field(
        "spu-rr22",
        description="PSI: SecretFlow's RR22 or ECDH engine as a worker process (needs the "
        "engine venv, `make install`), heteronn's in-process ECDH, or the multi-party protocol "
        "(with two or more collaborators the host learns only the final intersection; with "
        "one, spu-rr22); the same on every party (checked at join)",
    )
    psi_link_port: int = Field(
        0, ge=0, le=65535, description="port of the PSI engine's link; 0: any free port"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; set when parties share a machine"
    )
    scheduler_args: dict[str, Any] = Field(default_factory=dict, description="factory kwargs")
    training_mode: str | dict[str, Any] | None = Field(
        None,
        description="the task's training mode, e.g. 'pipelined:8' (docs/performance.md); set "
        "here, it replaces the scheduler's own; every party must use the same",
    )

    @field_validator("training_mode")
    @classmethod
    def _known_mode(cls, value: Any) -> Any:
        parse_training_mode(value)  # a ConfigError (a ValueError) names the problem
        return value

    max_payload_bytes: int = Field(
        limits.MAX_PAYLOAD_BYTES, gt=0,
        description="largest serialized Payload a peer may send in one call",
    )
    max_payload_bytes_by_kind: dict[str, int] = Field(
        default_factory=dict,
        description="per message kind (e.g. train.features), instead of max_payload_bytes",
    )
    max_queued_bytes_per_sender: int = Field(
        limits.MAX_QUEUED_BYTES_PER_SENDER, gt=0,
        description="bytes of a peer's messages waiting for the runtime; beyond it the "
        "peer's next call waits (backpressure) until its deadline",
    )
    max_streams_per_sender: int = Field(
        limits.MAX_STREAMS_PER_SENDER, ge=1, description="data calls a peer may have open at once"
    )
    max_call_s: float = Field(
        limits.MAX_CALL_S, gt=0,
        description="longest deadline a peer's call may carry (raised to this node's own "
        "calculation_timeout + schedule_timeout when that is longer)",
    )

    @field_validator("node_id", "task_id")
    @classmethod
    def _one_path_component(cls, value: str, info: ValidationInfo) -> str:
        """Ids name folders (<workdir>/<node_id>/<task_id>): one safe component each."""
        return limits.check_id(str(info.field_name), value)

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> Any:
        """Settings from `config` (else the file named by HETERONN_NODE_CONFIG, if set), the
        environment and `overrides`."""
        if config is None and os.environ.get(CONFIG_ENV):
            config = Path(os.environ[CONFIG_ENV])
        return cls(**settings_data(config, overrides))


class ServingSettings(_PartySettings):
    """`heteronn serve` / `launch_serving` / `batch_predict` (docs/inference.md). Precedence
    as NodeSettings; env vars ``HETERONN_SERVE_*`` (limits: ``HETERONN_SERVE_LIMITS__*``)."""

    model_config = SettingsConfigDict(
        env_prefix="HETERONN_SERVE_", extra="forbid", env_nested_delimiter="__"
    )

    node_id: str = Field(..., min_length=1, description="this party's node id (the bundle's)")
    bundle: Path = Field(..., description="the party's model/ folder (or its task's output)")
    listen: str = Field("0.0.0.0:50071", description="HOST:PORT this serving node listens on")
    metrics_port: int | None = Field(None, description="Prometheus /metrics port; unset: off")
    workdir: Path = Field(Path("."), description="audit log default: <workdir>/<node_id>/serving/")
    collaborators: dict[str, str] = Field(
        default_factory=dict, description="host: node id -> HOST:PORT of its serving node"
    )
    predict_clients: list[str] = Field(
        default_factory=list,
        description="host, mutual TLS: certificate names that may call Predict (empty: any "
        "certificate of the deployment's CA)",
    )
    max_batch: int = Field(256, ge=1, description="host: most ids in one dynamic batch")
    max_wait_ms: float = Field(2.0, ge=0, description="host: longest a call waits for company")
    batch_workers: int = Field(2, ge=1, description="host: batches run at once")
    startup_timeout_s: float = Field(
        30.0, gt=0, description="host: how long to wait for every collaborator at start-up"
    )
    audit_log: Path | None = Field(None, description="collaborator: the audit log (JSON lines)")
    torch_threads: int | None = Field(
        1, ge=1, description="torch intra-op threads (1: many small batches on shared cores)"
    )
    limits: ServingLimits = Field(default_factory=ServingLimits)
    scheduler_args: dict[str, Any] = Field(default_factory=dict, description="factory kwargs")
