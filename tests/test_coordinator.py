"""The coordinator over real gRPC on 127.0.0.1: fake nodes are real clients that join,
watch, heartbeat and report; the coordinator runs with its SQLite store and ticker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import task_cli
from services.server import CoordinatorSettings, RunningCoordinator, start_coordinator
from tests.coordinator_fakes import TERMINAL, FakeNode, P, Ph, respond, spec

NODES = ["h", "c1", "c2"]


def _start(db: Path, metrics: bool = False) -> RunningCoordinator:
    return start_coordinator(
        CoordinatorSettings(
            listen="127.0.0.1:0",
            db=str(db),
            metrics_port=0 if metrics else None,
            metrics_host="127.0.0.1",
            tick_interval_s=0.05,
            min_liveness_s=0,
            plaintext=True,
        )
    )


@pytest.fixture
def coord(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningCoordinator]:
    """`coord` without a /metrics endpoint (stopping one costs 0.5 s); parametrize
    indirectly with True to get one."""
    running = _start(tmp_path / "coordinator.db", metrics=getattr(request, "param", False))
    yield running
    running.stop(0)


@pytest.fixture
def make_nodes(coord: RunningCoordinator) -> Iterator:
    made: list[FakeNode] = []

    def make(task_id: str, names: list[str] = NODES, address: str | None = None) -> list[FakeNode]:
        nodes = [FakeNode(address or coord.address, task_id, n, host=n == "h") for n in names]
        made.extend(nodes)
        return nodes

    yield make
    for node in made:
        node.close()


def _start_all(nodes: list[FakeNode], **join_kw: object) -> None:
    for node in nodes:
        node.join(**join_kw)
        node.heartbeat()
        node.watch()


def _final(node: FakeNode) -> P.PhaseCommand:
    """The terminal command, then the stream must end."""
    while (cmd := node.next_command()) is not None:
        if cmd.phase in TERMINAL:
            assert node.next_command() is None, "stream stayed open after a terminal command"
            return cmd
    raise AssertionError(f"{node.node_id}: stream ended without a terminal command")


def _run(nodes: list[FakeNode], finish_round: int, test_rounds: set[int]) -> None:
    threads = [threading.Thread(target=respond, args=(n, finish_round, test_rounds)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a watch stream did not end"


def _names(cmds: list[P.PhaseCommand]) -> list[tuple[str, int]]:
    return [(Ph.Phase.Name(c.phase), c.round) for c in cmds]


@pytest.mark.parametrize("coord", [True], indirect=True)
def test_happy_path_three_nodes(coord: RunningCoordinator, make_nodes, capsys) -> None:
    nodes = make_nodes("t")
    info = nodes[0].client.create_task(spec("t", NODES))
    assert info.phase == Ph.PHASE_WAITING_FOR_NODES
    _start_all(nodes)
    _run(nodes, finish_round=2, test_rounds={1, 2})
    expected = [
        ("PHASE_PSI", 0),
        ("PHASE_SPLIT", 0),
        ("PHASE_TRAIN", 1),
        ("PHASE_TEST", 1),
        ("PHASE_TRAIN", 2),
        ("PHASE_TEST", 2),
        ("PHASE_FINISHED", 2),
    ]
    for node in nodes:
        assert _names(node.received)[-7:] == expected
    psi = next(c for c in nodes[1].received if c.phase == Ph.PHASE_PSI)
    assert {p.node_id: p.address for p in psi.participants} == {
        "h": "127.0.0.1:7001",
        "c1": "127.0.0.1:7002",
        "c2": "127.0.0.1:7002",
    }
    task = nodes[0].client.get_task("t")
    assert task.phase == Ph.PHASE_FINISHED and dict(task.metrics) == {"accuracy": 0.52}
    assert [p.checkpoint_round for p in task.participants] == [2, 2, 2]

    health = health_pb2_grpc.HealthStub(nodes[0].client._channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="heteronn.v1.CoordinatorService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    text = urllib.request.urlopen(f"http://127.0.0.1:{coord.metrics_port}/metrics").read().decode()
    assert 'heteronn_task_phase{phase="FINISHED",task_id="t"} 1.0' in text
    assert 'heteronn_task_round{task_id="t"} 2.0' in text

    assert task_cli.main(["--coordinator", coord.address, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["phase"] for t in listed["tasks"]] == ["PHASE_FINISHED"]


def test_join_errors(coord: RunningCoordinator, make_nodes) -> None:
    (eve,) = make_nodes("t", ["eve"])
    with pytest.raises(grpc.RpcError) as err:
        eve.join()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"task 't' is not known to the coordinator at {coord.address}" in err.value.details()
    eve.client.create_task(spec("t", NODES))
    with pytest.raises(grpc.RpcError) as err:
        eve.join()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node 'eve' is not a participant of task 't'" in err.value.details()
    assert "'h', 'c1', 'c2'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        eve.client.create_task(spec("t", ["h", "x"]))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_join_timeout_fails_every_watcher(coord: RunningCoordinator, make_nodes) -> None:
    nodes = make_nodes("t")
    nodes[0].client.create_task(spec("t", NODES, sched=0.5))
    _start_all(nodes[:2])
    for node in nodes[:2]:
        cmd = _final(node)
        assert cmd.phase == Ph.PHASE_FAILED
        assert cmd.reason.startswith("participant(s) 'c2' did not join task t within 0.5 s")


def test_heartbeat_loss(coord: RunningCoordinator, make_nodes) -> None:
    nodes = make_nodes("t")
    nodes[0].client.create_task(spec("t", NODES, sched=0.6))
    _start_all(nodes)
    nodes[2].wait_phase(Ph.PHASE_PSI)
    nodes[2].stop_heartbeats()  # c2's process "dies"
    cmd = _final(nodes[0])
    assert cmd.reason.startswith("node 'c2' stopped sending heartbeats")
    assert "during PSI; its process probably died or lost its network" in cmd.reason
    with pytest.raises(grpc.RpcError) as err:
        nodes[0].report(Ph.PHASE_PSI)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_phase_timeout(coord: RunningCoordinator, make_nodes) -> None:
    nodes = make_nodes("t")
    nodes[0].client.create_task(spec("t", NODES, calc=0.5))
    _start_all(nodes)
    nodes[0].report(Ph.PHASE_PSI)
    nodes[2].report(Ph.PHASE_PSI)
    cmd = _final(nodes[1])
    assert cmd.reason == (
        "phase PSI exceeded calculation_timeout=0.5 s waiting for 'c1'; "
        "raise calculation_timeout or find why 'c1' is slow"
    )


def test_split_mismatch(coord: RunningCoordinator, make_nodes) -> None:
    nodes = make_nodes("t", ["h", "c1"])
    nodes[0].client.create_task(spec("t", ["h", "c1"]))
    _start_all(nodes)
    for node in nodes:
        node.report(Ph.PHASE_PSI)
    nodes[0].report(Ph.PHASE_SPLIT, train_size=10000, test_size=2000, split_digest="a")
    nodes[1].report(Ph.PHASE_SPLIT, train_size=9990, test_size=2010, split_digest="b")
    assert _final(nodes[1]).reason == (
        "split_dataset gave different splits on different parties: host 'h' 10000 train / 2000 "
        "test, 'c1' 9990 / 2010; split_dataset must be deterministic and identical on every party"
    )


def test_error_report_reaches_every_watcher(coord: RunningCoordinator, make_nodes) -> None:
    nodes = make_nodes("t")
    nodes[0].client.create_task(spec("t", NODES))
    _start_all(nodes)
    nodes[1].wait_phase(Ph.PHASE_PSI)
    nodes[1].report(Ph.PHASE_PSI, error="train_a_batch raised KeyError('x')")
    reason = "node 'c1' (phase PSI): train_a_batch raised KeyError('x')"
    assert [_final(n).reason for n in nodes] == [reason] * 3
    (late,) = make_nodes("t", ["c2"])
    late.watch()  # a watcher connecting after the end gets the verdict replayed
    assert _final(late).reason == reason
    failures = coord.registry.get_sample_value(
        "heteronn_task_failures_total", {"reason": "node_error"}
    )
    assert failures == 1.0


def test_watch_stream_is_released_when_the_client_goes(coord, make_nodes) -> None:
    (node,) = make_nodes("t", ["h"])
    node.client.create_task(spec("t", ["h", "c"], sched=30))
    node.join()
    node.watch()
    assert node.wait_phase(Ph.PHASE_WAITING_FOR_NODES)
    assert coord.servicer.active_watchers == 1
    node.close()  # cancels the stream: the server thread must return, not wait forever
    deadline = time.monotonic() + 5
    while coord.servicer.active_watchers and time.monotonic() < deadline:
        time.sleep(0.02)
    assert coord.servicer.active_watchers == 0


def test_cancel_by_cli(coord: RunningCoordinator, make_nodes, capsys) -> None:
    nodes = make_nodes("t")
    argv = ["--coordinator", coord.address]
    assert task_cli.main([*argv, "create", "--task-id", "t", "--participants", "h,c1,c2"]) == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "PHASE_WAITING_FOR_NODES"
    _start_all(nodes[:1])
    assert task_cli.main([*argv, "cancel", "--task-id", "t", "--reason", "wrong data"]) == 0
    assert _final(nodes[0]).reason == "cancelled by operator: wrong data"
    assert task_cli.main([*argv, "get", "--task-id", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_restart_on_same_db_keeps_driving(tmp_path: Path, make_nodes) -> None:
    db = tmp_path / "restart.db"
    first = _start(db)
    nodes = make_nodes("t", ["h", "c1"], address=first.address)
    nodes[0].client.create_task(spec("t", ["h", "c1"], sched=1.0))
    _start_all(nodes)
    for node in nodes:
        node.report(Ph.PHASE_PSI)
    for node in nodes:
        node.report(Ph.PHASE_SPLIT, train_size=5, test_size=1, split_digest="d")
    nodes[0].wait_phase(Ph.PHASE_TRAIN)
    first.stop(0)
    for node in nodes:
        node.close()

    second = _start(db)
    try:
        nodes = make_nodes("t", ["h", "c1"], address=second.address)
        task = nodes[0].client.get_task("t")
        assert (task.phase, task.round) == (Ph.PHASE_TRAIN, 1)
        assert [t.spec.task_id for t in nodes[0].client.list_tasks()] == ["t"]
        for node in nodes:
            node.join()  # reconnecting nodes repeat their join: accepted
            node.heartbeat()
            node.watch()
        replay = nodes[1].next_command()
        assert _names([replay]) == [("PHASE_TRAIN", 1)]
        nodes[1].commands.put(replay)  # let the responder see it too
        _run(nodes, finish_round=1, test_rounds=set())
        assert _names(nodes[1].received)[-1] == ("PHASE_FINISHED", 1)
    finally:
        second.stop(0)


def test_recover_after_failure_resumes_at_min_checkpoint(coord, make_nodes) -> None:
    nodes = make_nodes("t")
    nodes[0].client.create_task(spec("t", NODES))
    _start_all(nodes)
    for node in nodes:
        node.wait_phase(Ph.PHASE_PSI)
    nodes[2].report(Ph.PHASE_PSI, error="node 'c2' crashed")
    assert _final(nodes[0]).phase == Ph.PHASE_FAILED
    with pytest.raises(grpc.RpcError) as err:
        nodes[0].join()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "restart every party with recover=True" in err.value.details()
    for node in nodes:
        node.close()

    nodes = make_nodes("t")
    for node in nodes:  # every party restarts with recover=True; creating twice is harmless
        node.client.create_task(spec("t", NODES, recover=True))
    for node, ckpt in zip(nodes, [4, 3, 5], strict=True):
        node.join(checkpoint_round=ckpt)
        node.heartbeat()
        node.watch()
    assert [n.wait_phase(Ph.PHASE_PSI).resume_round for n in nodes] == [3, 3, 3]
    for node in nodes:
        node.report(Ph.PHASE_PSI)
    for node in nodes:
        node.report(Ph.PHASE_SPLIT, train_size=5, test_size=1, split_digest="d")
    assert nodes[0].wait_phase(Ph.PHASE_TRAIN).round == 4


def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    """`heteronn coordinator` as a real process: answers RPCs, keeps its db, exits 0."""
    db = tmp_path / "cli.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.server", "--listen", "127.0.0.1:0", "--db", str(db),
         "--plaintext"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("heteronn coordinator listening on 127.0.0.1:"), line
        node = FakeNode(line.split()[-1], "t", "h", host=True)
        try:
            node.client.create_task(spec("t", ["h", "c"]))
            node.join()
        finally:
            node.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    again = _start(db)
    try:
        assert again.lifecycle.get_task("t").participants["h"].joined
    finally:
        again.stop(0)
