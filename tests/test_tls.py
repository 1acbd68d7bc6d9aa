"""Mutual TLS and peer authorisation over real gRPC servers on loopback, with certificates
made by wire.dev_certs (what `make certs` runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wire import dev_certs, health_probe
from wire.grpc_factory import open_channel, start_server
from wire.peer_auth import PeerAuthInterceptor
from wire.tls import TlsSettings

Req = health_pb2.HealthCheckRequest
Resp = health_pb2.HealthCheckResponse
PARTICIPANTS = {"coordinator", "host", "bank"}


def _tls(folder: Path, name: str) -> TlsSettings:
    return TlsSettings(
        ca_file=folder / "ca.crt", cert_file=folder / f"{name}.crt", key_file=folder / f"{name}.key"
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tuple[Path, Path]:
    """Our CA with participants and an outsider, and a foreign CA that also issued 'bank'."""
    ours, foreign = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("foreign")
    assert dev_certs.main(["--out", str(ours), "coordinator", "host", "bank", "mallory"]) == 0
    assert dev_certs.main(["--out", str(foreign), "bank"]) == 0
    return ours, foreign


@pytest.fixture(scope="module")
def host_server(certs):
    ours, _ = certs

    def echo(request: Req, context: grpc.ServicerContext) -> Resp:
        return Resp(status=Resp.SERVING)

    def register(server: grpc.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", {"Unary": handler}),)
        )
        return ["test.Echo"]

    server = start_server(
        "127.0.0.1:0",
        register,
        tls=_tls(ours, "host"),
        interceptors=[PeerAuthInterceptor(lambda: PARTICIPANTS)],
    )
    yield server
    server.stop(0)


def _echo(channel: grpc.Channel) -> Resp:
    call = channel.unary_unary(
        "/test.Echo/Unary",
        request_serializer=Req.SerializeToString,
        response_deserializer=Resp.FromString,
    )
    return call(Req(), timeout=5)


def test_participant_with_valid_certificate_is_accepted(certs, host_server):
    ours, _ = certs
    with open_channel(f"127.0.0.1:{host_server.port}", tls=_tls(ours, "bank")) as channel:
        assert _echo(channel).status == Resp.SERVING
    # the server is verified by its node name too (what peers dial in compose/helm)
    with open_channel(
        f"127.0.0.1:{host_server.port}", tls=_tls(ours, "coordinator"), server_name="host"
    ) as channel:
        assert _echo(channel).status == Resp.SERVING


def test_client_without_certificate_is_refused(certs, host_server):
    ours, _ = certs
    credentials = grpc.ssl_channel_credentials(root_certificates=(ours / "ca.crt").read_bytes())
    with (
        grpc.secure_channel(f"127.0.0.1:{host_server.port}", credentials) as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        _echo(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with (
        grpc.insecure_channel(f"127.0.0.1:{host_server.port}") as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        _echo(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(certs, host_server):
    ours, foreign = certs
    # a 'bank' certificate signed by a foreign CA, the client trusting our CA for the server
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ours / "ca.crt").read_bytes(),
        private_key=(foreign / "bank.key").read_bytes(),
        certificate_chain=(foreign / "bank.crt").read_bytes(),
    )
    with (
        grpc.secure_channel(f"127.0.0.1:{host_server.port}", credentials) as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        _echo(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_valid_certificate_of_non_participant_is_denied(certs, host_server):
    ours, _ = certs
    with open_channel(f"127.0.0.1:{host_server.port}", tls=_tls(ours, "mallory")) as channel:
        with pytest.raises(grpc.RpcError) as error:
            _echo(channel)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'mallory'" in error.value.details()
        assert "bank" in error.value.details()  # says who is allowed
        # health stays answerable to any holder of a CA certificate (probes, orchestrators)
        reply = health_pb2_grpc.HealthStub(channel).Check(Req(), timeout=5)
        assert reply.status == Resp.SERVING


def test_allowed_set_is_read_per_call_and_guards_streams(certs):
    ours, _ = certs
    allowed: set[str] = {"host"}
    # no exemptions: the health service's server-streaming Watch is then a guarded method
    guarded = PeerAuthInterceptor(lambda: allowed, exempt_methods=())
    server = start_server(
        "127.0.0.1:0", lambda server: [], tls=_tls(ours, "host"), interceptors=[guarded]
    )
    try:
        with open_channel(f"127.0.0.1:{server.port}", tls=_tls(ours, "bank")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                next(iter(stub.Watch(Req(), timeout=5)))
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
            allowed.add("bank")  # e.g. the task now lists bank as a participant
            assert next(iter(stub.Watch(Req(), timeout=5))).status == Resp.SERVING
    finally:
        server.stop(0)


def test_health_probe_cli_over_mtls(certs, host_server):
    ours, _ = certs
    env = {
        "HETERONN_NODE_NODE_ID": "host",  # the certificate is checked for this name
        "HETERONN_NODE_LISTEN": f"0.0.0.0:{host_server.port}",
        "HETERONN_NODE_TLS_CA_FILE": str(ours / "ca.crt"),
        "HETERONN_NODE_TLS_CERT_FILE": str(ours / "host.crt"),
        "HETERONN_NODE_TLS_KEY_FILE": str(ours / "host.key"),
    }
    assert health_probe.main([], env=env) == 0
    # the probe checks the server's identity: another node's name does not match
    assert health_probe.main(["--server-name", "bank", "--timeout", "2"], env=env) == 1
    # without a client certificate the probe reports failure instead of hanging
    assert health_probe.main(["--tls-ca", "", "--timeout", "2"], env=env) == 1


def test_extra_san_lets_peers_dial_a_public_name(tmp_path, certs):
    """`--dns` adds the name another organisation dials; the CN stays the node id."""
    ours, _ = certs
    out = tmp_path / "certs"
    shutil.copytree(ours, out)
    assert dev_certs.main(["--out", str(out), "--dns", "bank.org-b.example", "bank"]) == 0
    server = start_server(
        "127.0.0.1:0",
        lambda server: [],
        tls=_tls(out, "bank"),
        interceptors=[PeerAuthInterceptor(lambda: PARTICIPANTS)],
    )
    try:
        with open_channel(
            f"127.0.0.1:{server.port}", tls=_tls(out, "host"), server_name="bank.org-b.example"
        ) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(Req(), timeout=5).status == (
                Resp.SERVING
            )
        with (
            open_channel(
                f"127.0.0.1:{server.port}", tls=_tls(out, "host"), server_name="elsewhere.example"
            ) as channel,
            pytest.raises(grpc.RpcError) as error,
        ):
            health_pb2_grpc.HealthStub(channel).Check(Req(), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
