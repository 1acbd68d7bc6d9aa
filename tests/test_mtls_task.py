"""A whole task over mutual TLS: coordinator and both nodes hold certificates from one
development CA; every channel (node↔coordinator, node↔node) is encrypted and authenticated."""

from __future__ import annotations

import threading

from party_node.app import run_node
from party_node.settings import NodeSettings
from services.client import CoordinatorClient, task_spec
from services.server import CoordinatorSettings, start_coordinator
from tests import synthetic as syn
from wire import dev_certs
from wire.tls import TlsSettings


def test_task_over_mutual_tls(tmp_path):
    certs = tmp_path / "certs"
    for name in ("coordinator", "h", "c1"):
        dev_certs.issue(certs, name)
    dev_certs.issue(certs, "operator", client_only=True)
    ca = certs / "ca.crt"

    def tls(name: str) -> dict:
        return {
            "tls_ca_file": ca,
            "tls_cert_file": certs / f"{name}.crt",
            "tls_key_file": certs / f"{name}.key",
        }

    coordinator = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=":memory:", **tls("coordinator"))
    )
    try:
        client_tls = TlsSettings(
            ca_file=ca, cert_file=certs / "operator.crt", key_file=certs / "operator.key"
        )
        with CoordinatorClient(coordinator.address, client_tls) as client:
            client.create_task(
                task_spec("tls", ["h", "c1"], schedule_timeout_s=20, calculation_timeout_s=60)
            )
        host = syn.SynthHost("h", ["h", "c1"], 32, 1, syn.Faults(""))
        collab = syn.SynthCollaborator("c1", 32, syn.Faults(""))
        reports, errors = {}, {}

        def run(name, scheduler):
            settings = NodeSettings(
                node_id=name,
                task_id="tls",
                coordinator=coordinator.address,
                listen="127.0.0.1:0",
                workdir=tmp_path,
                **tls(name),
            )
            try:
                reports[name] = run_node(scheduler, settings)
            except Exception as exc:
                errors[name] = exc

        threads = [threading.Thread(target=run, args=a) for a in (("h", host), ("c1", collab))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not errors, errors
        assert reports["h"]["status"] == "finished" and reports["c1"]["status"] == "finished"
    finally:
        coordinator.drain(timeout=5)
        coordinator.stop()


def test_node_refuses_to_start_without_tls_unless_told():
    try:
        NodeSettings(node_id="h", task_id="t", coordinator="127.0.0.1:1")
    except ValueError as exc:
        assert "tls_plaintext = true" in str(exc) and "make certs" in str(exc)
    else:
        raise AssertionError("a node without certificates started in plaintext silently")
