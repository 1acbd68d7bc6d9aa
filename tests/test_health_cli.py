"""`heteronn health ADDRESS` against a real coordinator (plaintext and mutual TLS) and a
closed port: exit 0 when SERVING, 1 with one line on stderr otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from party_node.cli import main as heteronn
from services.server import CoordinatorSettings, start_coordinator
from tests.harness import free_port
from wire import dev_certs


@pytest.fixture(autouse=True)
def _no_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe takes defaults from HETERONN_* variables; tests pass everything explicitly."""
    for name in list(os.environ):
        if name.startswith(("HETERONN_NODE_", "HETERONN_COORDINATOR_", "HETERONN_HEALTH_")):
            monkeypatch.delenv(name)


def test_health_of_plaintext_coordinator_and_closed_port(capsys):
    running = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=":memory:", plaintext=True)
    )
    try:
        assert heteronn(["health", running.address]) == 0
        assert capsys.readouterr().out.strip() == f"{running.address}: SERVING"
        service = "heteronn.v1.CoordinatorService"
        assert heteronn(["health", running.address, "--service", service]) == 0
        capsys.readouterr()
        assert heteronn(["health", running.address, "--service", "no.such.Service"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "NOT_FOUND" in err
    finally:
        running.stop(0)
    address = f"127.0.0.1:{free_port()}"
    assert heteronn(["health", address, "--timeout", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{address}: UNAVAILABLE") and err.count("\n") == 1


def test_health_of_mtls_coordinator(tmp_path: Path, capsys):
    certs = tmp_path / "certs"
    assert dev_certs.main(["--out", str(certs), "--client", "operator", "coordinator"]) == 0
    tls = {"tls_cert_file": certs / "coordinator.crt", "tls_key_file": certs / "coordinator.key"}
    running = start_coordinator(
        CoordinatorSettings(
            listen="127.0.0.1:0", db=":memory:", tls_ca_file=certs / "ca.crt", **tls
        )
    )
    # any certificate of the CA may ask: health is not an operator call
    options = [
        "--tls-ca",
        str(certs / "ca.crt"),
        "--tls-cert",
        str(certs / "operator.crt"),
        "--tls-key",
        str(certs / "operator.key"),
        "--server-name",
        "coordinator",
    ]
    try:
        capsys.readouterr()
        assert heteronn(["health", running.address, *options]) == 0
        assert "SERVING" in capsys.readouterr().out
        assert heteronn(["health", running.address, "--timeout", "3"]) == 1  # plaintext client
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert heteronn(["health", running.address, "--tls-ca", str(certs / "ca.crt")]) == 1
        err = capsys.readouterr().err
        assert "bad TLS options" in err and err.count("\n") == 1
    finally:
        running.stop(0)


def test_health_command_exit_code_in_a_process():
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HETERONN_")}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "proto"), *sys.path])
    done = subprocess.run(
        [sys.executable, "-m", "party_node.cli", "health", address, "--timeout", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"{address}: UNAVAILABLE") and done.stderr.count("\n") == 1
