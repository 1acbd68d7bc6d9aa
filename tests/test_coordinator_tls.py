"""The coordinator under mutual TLS: a node with a certificate from the CA is served, a
client without one is refused. Certificates come from the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from services.client import CoordinatorClient
from services.server import CoordinatorSettings, start_coordinator
from wire.tls import TlsSettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, name: str, san: str) -> None:
    _openssl(
        "req",
        *_EC_KEY,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        f"{name}.pem",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    _openssl(
        "req",
        "-x509",
        *_EC_KEY,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=heteronn-test-ca",
        cwd=d,
    )
    _issue(d, "coordinator", "DNS:coordinator,DNS:localhost,IP:127.0.0.1")
    _issue(d, "node", "DNS:node")
    return d


def test_mutual_tls(certs: Path, tmp_path: Path) -> None:
    running = start_coordinator(
        CoordinatorSettings(
            listen="127.0.0.1:0",
            db=str(tmp_path / "c.db"),
            tls_ca_file=certs / "ca.pem",
            tls_cert_file=certs / "coordinator.pem",
            tls_key_file=certs / "coordinator.key",
        )
    )
    try:
        node_tls = TlsSettings(
            ca_file=certs / "ca.pem", cert_file=certs / "node.pem", key_file=certs / "node.key"
        )
        with CoordinatorClient(running.address, node_tls) as client:
            assert client.list_tasks() == []
        with CoordinatorClient(running.address, timeout=2) as plain:
            with pytest.raises(grpc.RpcError) as err:
                plain.list_tasks()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)
