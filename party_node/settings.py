"""Node settings for real deployments (`heteronn node`, `launch_task`): pydantic settings
read from ``HETERONN_NODE_*`` env vars, an optional TOML file, and explicit arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wire.config_file import settings_data
from wire.tls import TlsSettings


class NodeSettings(BaseSettings):
    """Precedence: explicit arguments > TOML file > environment > defaults."""

    model_config = SettingsConfigDict(env_prefix="HETERONN_NODE_", extra="forbid")

    node_id: str = Field(..., min_length=1, description="this node's id, as listed in the task")
    task_id: str = Field(..., min_length=1, description="the task to join")
    coordinator: str = Field(..., description="HOST:PORT of the coordinator")
    listen: str = Field("0.0.0.0:50061", description="HOST:PORT this node's PartyNode serves on")
    advertise: str = Field(
        "", description="HOST:PORT peers dial; default: the listen host (0.0.0.0: 127.0.0.1)"
    )
    metrics_port: int | None = Field(None, description="Prometheus /metrics port; unset: off")
    workdir: Path = Field(Path("."), description="outputs go to <workdir>/<node_id>/<task_id>/")
    recover: bool = Field(False, description="resume from the last complete round")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_plaintext: bool = Field(False, description="must be true to run without TLS certificates")
    psi_engine: Literal["spu-rr22", "spu-ecdh", "ecdh"] = Field(
        "spu-rr22",
        description="PSI: SecretFlow's RR22 or ECDH engine as a worker process (needs the "
        "engine venv, `make install`), or heteronn's in-process ECDH; the same on every party",
    )
    psi_link_port: int = Field(
        0, ge=0, le=65535, description="port of the PSI engine's link; 0: any free port"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; set when parties share a machine"
    )
    scheduler_args: dict[str, Any] = Field(default_factory=dict, description="factory kwargs")

    @model_validator(mode="after")
    def _tls_or_plaintext(self) -> NodeSettings:
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
            ca_file=self.tls_ca_file, cert_file=self.tls_cert_file, key_file=self.tls_key_file
        )

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> NodeSettings:
        return cls(**settings_data(config, overrides))
