"""The coordinator's bounds over real gRPC on 127.0.0.1 (issue 9): held watch streams cost
no threads and are capped, timeouts and sizes are checked at the API, a bad stored task
cannot stop a restart, ended tasks can be deleted, and malformed requests are
INVALID_ARGUMENT with a message naming the problem."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from heteronn.v1 import common_pb2, coordinator_pb2
from services.client import CoordinatorClient, task_spec
from services.domain import Participant, Phase, Role, Task, TaskSpec
from services.server import CoordinatorSettings, RunningCoordinator, start_coordinator
from services.store import SqliteTaskStore
from tests.coordinator_fakes import FakeNode
from tests.harness import ROOT

P = coordinator_pb2


def _settings(**kw: object) -> CoordinatorSettings:
    base: dict[str, object] = dict(
        listen="127.0.0.1:0", db=":memory:", plaintext=True, tick_interval_s=0.05
    )
    return CoordinatorSettings(**(base | kw))


@pytest.fixture
def coord() -> Iterator[RunningCoordinator]:
    running = start_coordinator(_settings())
    yield running
    running.stop(0)


def _code(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kw)
    return error.value.code(), error.value.details()


def _join(client: CoordinatorClient, task: str, node: str, **kw: object) -> P.TaskInfo:
    info = P.ParticipantInfo(
        node_id=node, role=common_pb2.ROLE_HOST if node == "h" else common_pb2.ROLE_COLLABORATOR,
        feature_key=f"fk-{node}", address="127.0.0.1:1",
    )
    return client.join(task, info, **kw)


# ---- item 1: watch streams -------------------------------------------------------------------
def test_three_hundred_held_watches_do_not_starve_heartbeats() -> None:
    """300 open WatchTask streams on a coordinator with 4 worker threads: heartbeats and
    joins of another task still answer at once (the streams wait on the event loop)."""
    running = start_coordinator(_settings(max_workers=4, max_watches=400))
    clients = [CoordinatorClient(running.address, timeout=5) for _ in range(3)]
    streams = []
    try:
        ops = clients[0]
        for t in range(3):
            ops.create_task(task_spec(f"crowd{t}", [f"n{i}" for i in range(25)]))
        for t in range(3):
            for i in range(25):
                for _ in range(4):  # the per-(task, node) cap
                    stream = clients[t].watch(f"crowd{t}", f"n{i}")
                    streams.append(stream)
        it = [iter(s) for s in streams]
        for stream in it:  # every stream is really open: its first command arrived
            assert next(stream).phase == common_pb2.PHASE_WAITING_FOR_NODES
        assert running.servicer.active_watchers == 300
        ops.create_task(task_spec("victim", ["h", "c"], schedule_timeout_s=30))
        victim = FakeNode(running.address, "victim", "h", host=True)
        try:
            started = time.monotonic()
            victim.join()
            for _ in range(20):
                victim.client.heartbeat("victim", "h", timeout=2)
            assert time.monotonic() - started < 5
        finally:
            victim.close()
    finally:
        for stream in streams:
            stream.cancel()
        for client in clients:
            client.close()
        running.stop(0)


def test_watches_are_capped_per_node_and_in_total() -> None:
    running = start_coordinator(_settings(max_watches=6))
    client = CoordinatorClient(running.address, timeout=5)
    streams = []
    try:
        client.create_task(task_spec("t", ["h", "c1", "c2"]))
        for _ in range(4):
            streams.append(iter(client.watch("t", "h")))
            next(streams[-1])
        code, details = _code(lambda: next(iter(client.watch("t", "h"))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4 watches of task 't' by node 'h' are open already" in details
        assert "max_watches_per_node" in details
        for _ in range(2):
            streams.append(iter(client.watch("t", "c1")))
            next(streams[-1])
        code, details = _code(lambda: next(iter(client.watch("t", "c2"))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_watches" in details
    finally:
        client.close()
        running.stop(0)


# ---- item 2: timeouts ------------------------------------------------------------------------
def test_huge_timeouts_are_refused_at_the_api(coord: RunningCoordinator) -> None:
    with CoordinatorClient(coord.address, timeout=5) as client:
        code, details = _code(
            client.create_task, task_spec("t", ["h", "c"], schedule_timeout_s=1e308)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "schedule_timeout must be a positive number of seconds up to 604800" in details
        client.create_task(task_spec("t", ["h", "c"]))
        code, details = _code(_join, client, "t", "h", calculation_timeout_s=1e308)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "calculation_timeout" in details
        assert client.get_task("t").phase == common_pb2.PHASE_WAITING_FOR_NODES


def test_a_bad_stored_task_does_not_stop_a_restart(tmp_path: Path) -> None:
    """A task stored with an impossible timeout (written before the API checked) and a row
    that cannot be read: the coordinator starts, keeps driving the good task and fails the
    bad one with a reason."""
    db = tmp_path / "c.db"
    store = SqliteTaskStore(db)
    nodes = {n: Participant(n, role=Role.COLLABORATOR, joined=True) for n in ("h", "c")}
    poisoned = Task(spec=TaskSpec("poisoned", ["h", "c"], 1e308, 1e308), participants=nodes,
                    phase=Phase.PSI, deadline=1e308)
    good = Task(spec=TaskSpec("good", ["h", "c"], 30.0, 60.0), participants={})
    good.participants = {n: Participant(n) for n in ("h", "c")}
    for task in (poisoned, good):
        store.save(task)
    store._db.execute("INSERT INTO tasks (task_id, participants, schedule_timeout_s, "
                      "calculation_timeout_s, recover, mode, phase, round, reason, failure_kind, "
                      "metrics, resume_round, reports, finish_after_test, phase_started, "
                      "deadline, updated) VALUES ('garbled', 'not json', 1, 1, 0, 'plain', 99, "
                      "0, '', '', '{}', 0, '{}', 0, 0, 0, 0)")
    store.close()
    running = start_coordinator(_settings(db=str(db)))
    try:
        with CoordinatorClient(running.address, timeout=5) as client:
            bad = client.get_task("poisoned")
            assert bad.phase == common_pb2.PHASE_FAILED
            assert "could not restore task 'poisoned'" in bad.reason
            assert client.get_task("good").phase == common_pb2.PHASE_WAITING_FOR_NODES
            assert {t.spec.task_id for t in client.list_tasks()} == {"poisoned", "good"}
    finally:
        running.stop(0)


# ---- item 7: sizes, counts, paging, deletion -------------------------------------------------
def test_oversized_requests_and_texts(coord: RunningCoordinator) -> None:
    with CoordinatorClient(coord.address, timeout=10) as client:
        code, _ = _code(client.create_task, task_spec("x" * 10_000_000, ["h", "c"]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # over the 1 MiB request limit
        code, details = _code(client.create_task, task_spec("x" * 129, ["h", "c"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid id" in details
        assert len(details) < 400  # the id is not echoed whole
        started = time.monotonic()
        code, details = _code(client.create_task, task_spec("t", [f"n{i}" for i in range(40_000)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 64 participants" in details
        assert time.monotonic() - started < 2
        client.create_task(task_spec("t", ["h", "c"]))
        node = P.ReportPhaseRequest(task_id="t", node_id="h", phase=common_pb2.PHASE_PSI,
                                    error="E" * 900_000)
        client.report(node)
        task = client.get_task("t")
        assert task.phase == common_pb2.PHASE_FAILED and len(task.reason) <= 2000
        assert "more characters cut" in task.reason
        assert [t.spec.task_id for t in client.list_tasks()] == ["t"]


def test_list_tasks_pages_and_delete_frees_ids() -> None:
    running = start_coordinator(_settings(max_tasks=130))
    try:
        with CoordinatorClient(running.address, timeout=10) as client:
            for i in range(130):
                client.create_task(task_spec(f"t{i:03d}", ["h", "c"]))
            first = client.list_tasks_page()
            assert len(first.tasks) == 100 and first.tasks[0].spec.task_id == "t129"
            assert len(client.list_tasks()) == 130
            code, details = _code(client.create_task, task_spec("one-more", ["h", "c"]))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_tasks" in details
            code, details = _code(client.delete_task, "t000")
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "cancel it first" in details
            client.cancel_task("t000", "done with it")
            assert client.delete_task("t000").phase == common_pb2.PHASE_FAILED
            assert _code(client.get_task, "t000")[0] == grpc.StatusCode.NOT_FOUND
            client.create_task(task_spec("one-more", ["h", "c"]))
            code, _ = _code(client.list_tasks_page, page_token="9999")
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        running.stop(0)


# ---- item 8: defaults ------------------------------------------------------------------------
def test_coordinator_refuses_plaintext_unless_told(tmp_path: Path) -> None:
    assert CoordinatorSettings(plaintext=True).listen == "127.0.0.1:50051"
    done = subprocess.run(
        [sys.executable, "-m", "party_node.cli", "coordinator", "--listen", "127.0.0.1:0",
         "--db", str(tmp_path / "c.db")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 2
    assert "no TLS certificates configured" in done.stderr and "--plaintext" in done.stderr
    assert not (tmp_path / "c.db").exists()


# ---- item 10: smaller ones ---------------------------------------------------------------------
def test_repeated_create_with_another_spec_is_already_exists(coord: RunningCoordinator) -> None:
    with CoordinatorClient(coord.address, timeout=5) as client:
        client.create_task(task_spec("t", ["h", "c"], calculation_timeout_s=300))
        assert client.create_task(task_spec("t", ["c", "h"], calculation_timeout_s=300))
        code, details = _code(
            client.create_task, task_spec("t", ["h", "c"], calculation_timeout_s=30, mode="secure")
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert "already exists with another calculation_timeout, mode" in details


def test_task_nobody_joins_expires() -> None:
    running = start_coordinator(_settings(unjoined_expiry_s=0.5))
    try:
        with CoordinatorClient(running.address, timeout=5) as client:
            client.create_task(task_spec("t", ["h", "c"]))
            deadline = time.monotonic() + 10
            while client.get_task("t").phase != common_pb2.PHASE_FAILED:
                assert time.monotonic() < deadline, "the unjoined task never expired"
                time.sleep(0.1)
            assert "no participant joined task t within 0.5 s" in client.get_task("t").reason
    finally:
        running.stop(0)


@pytest.mark.parametrize(
    "fields, problem",
    [
        (dict(phase=99), "phase 99 is not a phase"),
        (dict(phase=common_pb2.PHASE_UNSPECIFIED), "phase 0 is not a phase"),
        (dict(phase=common_pb2.PHASE_FINISHED), "reported success for phase FINISHED"),
        (dict(phase=common_pb2.PHASE_SPLIT, train_size=-5), "train_size must be >= 0"),
        (dict(phase=common_pb2.PHASE_TRAIN, round=-1), "round must be >= 0"),
    ],
)
def test_malformed_reports_are_invalid_argument(coord: RunningCoordinator, fields, problem):
    with CoordinatorClient(coord.address, timeout=5) as client:
        client.create_task(task_spec("t", ["h", "c"]))
        _join(client, "t", "h")
        request = P.ReportPhaseRequest(task_id="t", node_id="h", **fields)
        code, details = _code(client.report, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and problem in details
        assert client.get_task("t").phase == common_pb2.PHASE_WAITING_FOR_NODES


def test_undecodable_requests_are_invalid_argument(coord: RunningCoordinator) -> None:
    channel = grpc.insecure_channel(coord.address)
    try:
        for method in ("GetTask", "JoinTask", "WatchTask"):
            path = f"/heteronn.v1.CoordinatorService/{method}"
            kind = channel.unary_stream if method == "WatchTask" else channel.unary_unary
            call = kind(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as error:
                result = call(b"\xff\xff\xff\xff", timeout=5)
                if method == "WatchTask":
                    next(iter(result))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert f"is not a valid heteronn.v1.{method}Request" in error.value.details()
    finally:
        channel.close()


def test_ids_are_escaped_in_logs(coord: RunningCoordinator, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="heteronn")
    with CoordinatorClient(coord.address, timeout=5) as client:
        forged = "t\n2026-01-01 00:00:00 INFO heteronn.coordinator: task admin granted"
        code, _ = _code(client.get_task, forged)
        assert code == grpc.StatusCode.NOT_FOUND
        client.create_task(task_spec("t", ["h", "c"]))
        client.report(P.ReportPhaseRequest(task_id="t", node_id="h", phase=common_pb2.PHASE_PSI,
                                           error="boom\nFORGED line"))
    lines = [r.getMessage() for r in caplog.records]
    assert any("FORGED line" in line for line in lines)
    assert not any("\n" in line for line in lines), [x for x in lines if "\n" in x]


def test_unary_calls_keep_answering_while_watchers_wait(coord: RunningCoordinator) -> None:
    """The thread pool serves unary calls concurrently with open watches (sanity)."""
    with CoordinatorClient(coord.address, timeout=5) as client:
        client.create_task(task_spec("t", ["h", "c"]))
        stream = client.watch("t", "h")
        next(iter(stream))
        with futures.ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda _: client.get_task("t").spec.task_id, range(40)))
        assert done == ["t"] * 40
        stream.cancel()
