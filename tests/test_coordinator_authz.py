"""Who may call the coordinator under mutual TLS: real gRPC on loopback, real certificates
from wire.dev_certs. Operators (the `operators` setting) create and cancel tasks; a node acts
only as the node its certificate names; reads are for operators and participants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from heteronn.v1 import common_pb2, coordinator_pb2
from services import task_cli
from services.client import CoordinatorClient, task_spec
from services.server import CoordinatorSettings, RunningCoordinator, start_coordinator
from wire import dev_certs
from wire.tls import TlsSettings

P = coordinator_pb2


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    assert (
        dev_certs.main(
            ["--out", str(out), "--client", "operator", "coordinator", "h", "c1", "mallory"]
        )
        == 0
    )
    return out


def _tls(certs: Path, name: str) -> TlsSettings:
    return TlsSettings(
        ca_file=certs / "ca.crt", cert_file=certs / f"{name}.crt", key_file=certs / f"{name}.key"
    )


@pytest.fixture
def coordinator(certs: Path) -> Iterator[RunningCoordinator]:
    tls = _tls(certs, "coordinator")
    running = start_coordinator(
        CoordinatorSettings(
            listen="127.0.0.1:0",
            db=":memory:",
            tls_ca_file=tls.ca_file,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            operators=["operator"],
        )
    )
    yield running
    running.stop(0)


def _cli(certs: Path, coordinator: RunningCoordinator, name: str, *args: str) -> list[str]:
    return [
        "--coordinator",
        coordinator.address,
        "--tls-ca",
        str(certs / "ca.crt"),
        "--tls-cert",
        str(certs / f"{name}.crt"),
        "--tls-key",
        str(certs / f"{name}.key"),
        *args,
    ]


def _create(task_id: str = "t") -> list[str]:
    return ["create", "--task-id", task_id, "--participants", "h,c1"]


def _client(certs: Path, coordinator: RunningCoordinator, name: str) -> CoordinatorClient:
    return CoordinatorClient(coordinator.address, _tls(certs, name), timeout=5)


def test_node_certificate_cannot_create_or_cancel(certs, coordinator, capsys):
    assert task_cli.main(_cli(certs, coordinator, "h", *_create())) == 1
    err = capsys.readouterr().err
    assert "heteronn task create: PERMISSION_DENIED" in err
    assert "certificate 'h' is not an operator" in err and "(operators: operator)" in err
    assert "HETERONN_COORDINATOR_OPERATORS" in err and "--operators" in err
    assert coordinator.lifecycle.list_tasks() == []

    assert task_cli.main(_cli(certs, coordinator, "operator", *_create())) == 0
    capsys.readouterr()
    assert task_cli.main(_cli(certs, coordinator, "c1", "cancel", "--task-id", "t")) == 1
    err = capsys.readouterr().err
    assert "heteronn task cancel: PERMISSION_DENIED" in err and "'c1' is not an operator" in err
    assert coordinator.lifecycle.get_task("t").phase.name == "WAITING_FOR_NODES"


def test_operator_certificate_creates_reads_and_cancels(certs, coordinator, capsys):
    assert task_cli.main(_cli(certs, coordinator, "operator", *_create())) == 0
    assert '"task_id": "t"' in capsys.readouterr().out
    assert task_cli.main(_cli(certs, coordinator, "operator", "list")) == 0
    assert '"task_id": "t"' in capsys.readouterr().out
    argv = _cli(certs, coordinator, "operator", "cancel", "--task-id", "t", "--reason", "oops")
    assert task_cli.main(argv) == 0
    assert "cancelled by operator: oops" in capsys.readouterr().out
    assert coordinator.lifecycle.get_task("t").phase.name == "FAILED"


def test_operators_setting_and_tls_files_from_environment(certs, coordinator, capsys, monkeypatch):
    """The task CLI takes its certificate from HETERONN_TASK_TLS_*; the coordinator reads
    `operators` as a comma-separated environment variable."""
    env = {
        "HETERONN_TASK_COORDINATOR": coordinator.address,
        "HETERONN_TASK_TLS_CA_FILE": str(certs / "ca.crt"),
        "HETERONN_TASK_TLS_CERT_FILE": str(certs / "operator.crt"),
        "HETERONN_TASK_TLS_KEY_FILE": str(certs / "operator.key"),
    }
    assert task_cli.main(_create("env"), env=env) == 0
    assert '"task_id": "env"' in capsys.readouterr().out
    monkeypatch.setenv("HETERONN_COORDINATOR_OPERATORS", "ops-bot, h")
    assert CoordinatorSettings(plaintext=True).operators == ["ops-bot", "h"]
    monkeypatch.setenv("HETERONN_COORDINATOR_OPERATORS", '["ops-bot"]')
    assert CoordinatorSettings(plaintext=True).operators == ["ops-bot"]


def test_node_cannot_act_as_another_node(certs, coordinator):
    with _client(certs, coordinator, "operator") as operator:
        operator.create_task(task_spec("t", ["h", "c1"], schedule_timeout_s=30))
    h = _client(certs, coordinator, "h")
    as_c1 = P.ParticipantInfo(
        node_id="c1", role=common_pb2.ROLE_COLLABORATOR, feature_key="k", address="127.0.0.1:1"
    )
    calls = {
        "JoinTask": lambda: h.join("t", as_c1),
        "ReportPhase": lambda: h.report(
            P.ReportPhaseRequest(task_id="t", node_id="c1", error="forged failure")
        ),
        "Heartbeat": lambda: h.heartbeat("t", "c1"),
        "WatchTask": lambda: next(iter(h.watch("t", "c1"))),
    }
    try:
        for method, call in calls.items():
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            details = error.value.details()
            assert f"{method}: certificate 'h' may not act as node 'c1'" in details, details
        assert coordinator.lifecycle.get_task("t").phase.name == "WAITING_FOR_NODES"
        # as itself the same node is served
        as_h = P.ParticipantInfo(
            node_id="h", role=common_pb2.ROLE_HOST, feature_key="kh", address="127.0.0.1:2"
        )
        assert h.join("t", as_h).spec.task_id == "t"
        h.heartbeat("t", "h")
        watch = h.watch("t", "h")
        assert next(iter(watch)).phase == common_pb2.PHASE_WAITING_FOR_NODES
        watch.cancel()
    finally:
        h.close()


def test_reads_are_for_operators_and_participants(certs, coordinator):
    op = _client(certs, coordinator, "operator")
    mallory = _client(certs, coordinator, "mallory")
    h = _client(certs, coordinator, "h")
    try:
        for task_id, nodes in (("ours", ["h", "c1"]), ("theirs", ["c1", "mallory"])):
            op.create_task(task_spec(task_id, nodes, schedule_timeout_s=30))
        assert {t.spec.task_id for t in op.list_tasks()} == {"ours", "theirs"}
        assert [t.spec.task_id for t in h.list_tasks()] == ["ours"]
        assert h.get_task("ours").spec.task_id == "ours"
        with pytest.raises(grpc.RpcError) as error:
            mallory.get_task("ours")
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'mallory' is neither an operator nor a participant of task 'ours'" in (
            error.value.details()
        )
        with pytest.raises(grpc.RpcError) as error:  # an anonymous watch is a read too
            next(iter(mallory.watch("ours")))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        watch = op.watch("ours")
        assert next(iter(watch)).task_id == "ours"
        watch.cancel()
    finally:
        for client in (op, mallory, h):
            client.close()


def test_unknown_task_looks_like_a_foreign_one_except_to_operators(certs, coordinator):
    """GetTask checks who asks before it says whether a task exists: a node cannot probe
    other organisations' task ids (issue 9, item 10)."""
    op = _client(certs, coordinator, "operator")
    mallory = _client(certs, coordinator, "mallory")
    try:
        op.create_task(task_spec("secret-merger", ["h", "c1"], schedule_timeout_s=30))
        answers = {}
        for task_id in ("secret-merger", "no-such-task"):
            with pytest.raises(grpc.RpcError) as error:
                mallory.get_task(task_id)
            answers[task_id] = (error.value.code(), error.value.details().replace(task_id, "T"))
        assert answers["secret-merger"] == answers["no-such-task"]
        assert answers["no-such-task"][0] == grpc.StatusCode.PERMISSION_DENIED
        assert "h" not in answers["no-such-task"][1].split("'")  # participants are not listed
        with pytest.raises(grpc.RpcError) as error:
            op.get_task("no-such-task")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        op.close()
        mallory.close()


def test_plaintext_coordinator_checks_no_names():
    """Without TLS (local demos, tests) every caller may do everything, as before."""
    running = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=":memory:", plaintext=True)
    )
    try:
        assert task_cli.main(["--coordinator", running.address, *_create()]) == 0
        assert task_cli.main(["--coordinator", running.address, "cancel", "--task-id", "t"]) == 0
    finally:
        running.stop(0)
