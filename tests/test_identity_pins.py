"""Identities pinned to their issuer (issue 9, item 9), over real gRPC with real certificates:
with the documented bundle of two organisations' CAs, organisation B's CA mints certificates
named `h` and `operator`; pins (settings tls_pins) make the node and the coordinator refuse
them, a fingerprint pin admits exactly one certificate, and IP SANs are never names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from heteronn.v1 import common_pb2, party_node_pb2
from services.client import CoordinatorClient, task_spec
from services.server import CoordinatorSettings, start_coordinator
from tests import node_rig as rig
from wire import dev_certs
from wire.grpc_factory import open_channel
from wire.peer_auth import fingerprint
from wire.tls import TlsSettings


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a/: org A's CA with h, coordinator, operator; b/: org B's CA with c1 and forgeries
    named h and operator; bundle.crt: both CAs, as docs/operations.md describes."""
    root = tmp_path_factory.mktemp("orgs")
    for org, names in (("a", ["coordinator", "h"]), ("b", ["c1", "h"])):
        args = ["--out", str(root / org), "--client", "operator", *names]
        assert dev_certs.main(args) == 0
    (root / "bundle.crt").write_bytes(
        (root / "a" / "ca.crt").read_bytes() + (root / "b" / "ca.crt").read_bytes()
    )
    return root


def _tls(orgs: Path, org: str, name: str, **pins: str) -> TlsSettings:
    return TlsSettings(
        ca_file=orgs / "bundle.crt",
        cert_file=orgs / org / f"{name}.crt",
        key_file=orgs / org / f"{name}.key",
        pins=pins,
    )


def _psi_code(node: rig.Rig, tls: TlsSettings) -> tuple[grpc.StatusCode, str]:
    channel = open_channel(node.address, tls, server_name="c1")
    stub = rig.party_node_pb2_grpc.PartyNodeServiceStub(channel)
    request = party_node_pb2.PsiRequest(
        header=common_pb2.Header(task_id=rig.TASK, sender="h", kind="psi"),
        step=party_node_pb2.PSI_STEP_BLINDED,
    )
    try:
        with pytest.raises(grpc.RpcError) as error:
            next(stub.Psi(iter([request]), timeout=10))
        return error.value.code(), error.value.details()
    finally:
        channel.close()


@pytest.fixture
def collaborator(orgs: Path) -> Iterator[rig.Rig]:
    """Node c1 (org B) trusting the two-CA bundle, with `h` and `coordinator` pinned to org
    A's CA and its own name to B's."""
    pins = {"h": str(orgs / "a" / "ca.crt"), "coordinator": str(orgs / "a" / "ca.crt"),
            "c1": str(orgs / "b" / "ca.crt")}
    node = rig.start_with_tls(
        "c1", _tls(orgs, "b", "c1", **pins), psi_wait_s=0.5
    )
    yield node
    node.stop()


def test_a_name_minted_by_another_organisations_ca_is_refused(orgs, collaborator) -> None:
    code, details = _psi_code(collaborator, _tls(orgs, "b", "h"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "names no identity its issuer may vouch for" in details and "tls_pins" in details
    code, details = _psi_code(collaborator, _tls(orgs, "a", "h"))
    assert code == grpc.StatusCode.UNAVAILABLE, details  # past authorisation: not ready yet


def test_without_pins_a_two_ca_bundle_admits_no_name(orgs) -> None:
    node = rig.start_with_tls("c1", _tls(orgs, "b", "c1"), psi_wait_s=0.5)
    try:
        code, details = _psi_code(node, _tls(orgs, "a", "h"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "tls_pins" in details
    finally:
        node.stop()


def test_a_fingerprint_pin_admits_exactly_one_certificate(orgs, tmp_path) -> None:
    real = x509.load_pem_x509_certificate((orgs / "a" / "h.crt").read_bytes())
    pins = {"h": fingerprint(real), "c1": str(orgs / "b" / "ca.crt")}
    node = rig.start_with_tls("c1", _tls(orgs, "b", "c1", **pins), psi_wait_s=0.5)
    try:
        assert _psi_code(node, _tls(orgs, "a", "h"))[0] == grpc.StatusCode.UNAVAILABLE
        # Org A re-issues a certificate named h (same CA): not the pinned one.
        again = tmp_path / "again"
        again.mkdir()
        for name in ("ca.crt", "ca.key"):
            (again / name).write_bytes((orgs / "a" / name).read_bytes())
        assert dev_certs.main(["--out", str(again), "h"]) == 0
        reissued = TlsSettings(ca_file=orgs / "bundle.crt", cert_file=again / "h.crt",
                               key_file=again / "h.key")
        assert _psi_code(node, reissued)[0] == grpc.StatusCode.PERMISSION_DENIED
    finally:
        node.stop()


def test_ip_sans_are_not_identities(tmp_path) -> None:
    """dev certificates carry IP:127.0.0.1; with one CA (no pins needed) a coordinator whose
    operators list "127.0.0.1" still does not take a node's certificate for that name."""
    certs = tmp_path / "one-ca"
    assert dev_certs.main(["--out", str(certs), "coordinator", "h"]) == 0
    tls = rig.tls(certs, "coordinator")
    running = start_coordinator(CoordinatorSettings(
        listen="127.0.0.1:0", db=":memory:", tls_ca_file=tls.ca_file,
        tls_cert_file=tls.cert_file, tls_key_file=tls.key_file, operators=["127.0.0.1"],
    ))
    try:
        node = CoordinatorClient(running.address, rig.tls(certs, "h"), timeout=5)
        with pytest.raises(grpc.RpcError) as error:
            node.create_task(task_spec("t", ["h", "c1"]))
        node.close()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate 'h' is not an operator" in error.value.details()
    finally:
        running.stop(0)


def test_dialling_a_pinned_name_trusts_only_its_ca(orgs) -> None:
    """A server presenting org B's forged `h` certificate: a client that pins h to org A's CA
    does not complete the handshake."""
    impostor = rig.start_with_tls("h", _tls(orgs, "b", "h", h=str(orgs / "b" / "ca.crt")))
    try:
        pinned = _tls(orgs, "b", "c1", h=str(orgs / "a" / "ca.crt"))
        channel = open_channel(impostor.address, pinned, server_name="h")
        stub = rig.party_node_pb2_grpc.PartyNodeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.GetStatus(party_node_pb2.GetStatusRequest(), timeout=5)
        channel.close()
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        impostor.stop()


def test_coordinator_refuses_an_operator_minted_by_another_ca(orgs) -> None:
    a_ca = str(orgs / "a" / "ca.crt")
    tls = _tls(orgs, "a", "coordinator")
    running = start_coordinator(CoordinatorSettings(
        listen="127.0.0.1:0", db=":memory:", tls_ca_file=tls.ca_file,
        tls_cert_file=tls.cert_file, tls_key_file=tls.key_file,
        tls_pins={"operator": a_ca, "coordinator": a_ca, "h": a_ca},
    ))
    try:
        forged = CoordinatorClient(running.address, _tls(orgs, "b", "operator"), timeout=5)
        with pytest.raises(grpc.RpcError) as error:
            forged.create_task(task_spec("t", ["h", "c1"]))
        forged.close()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "tls_pins" in error.value.details()
        real = CoordinatorClient(running.address, _tls(orgs, "a", "operator"), timeout=5)
        assert real.create_task(task_spec("t", ["h", "c1"])).spec.task_id == "t"
        real.close()
    finally:
        running.stop(0)


def test_a_bad_pin_is_a_clear_setting_error(orgs) -> None:
    with pytest.raises(ValueError, match="tls_pins\\['h'\\] = 'sha256:abc'"):
        _tls(orgs, "a", "h", h="sha256:abc")
    with pytest.raises(ValueError, match="neither 'sha256:<hex>' nor a readable PEM file"):
        _tls(orgs, "a", "h", h="/no/such/ca.crt")
