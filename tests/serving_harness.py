"""Serving nodes as real processes (`heteronn serve`) for the serving tests: settings files,
start-up until the gRPC health service says SERVING, logs kept for inspection."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import ROOT, free_port
from wire import dev_certs, health_probe
from wire.config_file import settings_toml
from wire.tls import TlsSettings


def issue_certs(out: Path, nodes: list[str], clients: list[str]) -> Path:
    for name in nodes:
        dev_certs.issue(out, name)
    for name in clients:
        dev_certs.issue(out, name, client_only=True)
    return out


def tls_files(certs: Path, name: str) -> dict[str, str]:
    return {
        "tls_ca_file": str(certs / "ca.crt"),
        "tls_cert_file": str(certs / f"{name}.crt"),
        "tls_key_file": str(certs / f"{name}.key"),
    }


def client_tls(certs: Path, name: str) -> TlsSettings:
    files = tls_files(certs, name)
    return TlsSettings(
        ca_file=files["tls_ca_file"], cert_file=files["tls_cert_file"],
        key_file=files["tls_key_file"],
    )


@dataclass
class Served:
    name: str
    address: str
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def spawn_serve(
    workdir: Path, name: str, scheduler: str, settings: dict[str, Any], port: int | None = None
) -> Served:
    """`python -m party_node.cli serve --scheduler ... --config <name>.toml` in `workdir`."""
    port = port or free_port()
    settings = {"listen": f"127.0.0.1:{port}", "workdir": str(workdir), **settings}
    config = workdir / f"{name}-serve.toml"
    config.write_text(settings_toml(settings))
    log = workdir / f"{name}-serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "party_node.cli", "serve", "--scheduler", scheduler,
             "--config", str(config)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    return Served(name, f"127.0.0.1:{port}", proc, log)


def wait_serving(
    served: Served, tls: TlsSettings | None, server_name: str, timeout: float = 120
) -> None:
    """Until the node's health service says SERVING; its log if it exits or never does."""
    if health_probe.wait_serving(
        served.address, tls, server_name, timeout, lambda: served.proc.poll() is None
    ):
        return
    if served.proc.poll() is not None:
        raise AssertionError(
            f"{served.name} exited with {served.proc.returncode}:\n{served.output()}"
        )
    served.stop()
    raise AssertionError(f"{served.name} did not serve within {timeout} s:\n{served.output()}")


def run_serve_to_exit(workdir: Path, name: str, scheduler: str, settings: dict[str, Any],
                      timeout: float = 120) -> tuple[int, str]:
    """A serving node expected to refuse to start: its exit code and output."""
    served = spawn_serve(workdir, name, scheduler, settings)
    try:
        code = served.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        served.stop()
        raise AssertionError(f"{name} kept running:\n{served.output()}") from None
    return code, served.output()
