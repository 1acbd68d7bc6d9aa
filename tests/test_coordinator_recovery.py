"""Coordinator recovery semantics (issue 13) on a fake clock, against every TaskStore backend:
a node that restarts joins with a new incarnation; with recover=True it interrupts the running
attempt and a new attempt resumes from the newest checkpoint position every party has."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services import task_cli
from services.domain import Participant, Phase, Role
from services.errors import InvalidRequest, WrongPhase
from services.store import SqliteTaskStore, TaskStore
from tests import test_coordinator_lifecycle as lifecycle
from tests.test_coordinator_lifecycle import NODES, Rig

store = lifecycle.store  # the fixture: every test runs against each TaskStore backend


def join(rig: Rig, node: str, incarnation: str, recover: bool = False, **kw: object) -> None:
    fields: dict[str, object] = dict(
        role=Role.HOST if node == "h" else Role.COLLABORATOR,
        feature_key=f"fk-{node}",
        address=f"{node}:7000",
        incarnation=incarnation,
    )
    fields.update(kw)
    rig.lc.join("t", Participant(node_id=node, **fields), recover=recover)  # type: ignore[arg-type]


def training(rig: Rig, rounds: int) -> None:
    """Every node joined (incarnation '<node>-1'), trained `rounds` rounds, TRAIN next."""
    rig.create()
    for n in NODES:
        join(rig, n, f"{n}-1")
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT)
    for r in range(1, rounds + 1):
        rig.all_report(Phase.TRAIN, r)


def test_restarted_node_with_recover_interrupts_the_attempt(store: TaskStore) -> None:
    """The issue's case: the coordinator's state says TRAIN round 4 (it died with the host's
    process); after its restart the host's new process joins with recover=True."""
    rig = Rig(store)
    training(rig, 3)
    assert (rig.task.phase, rig.task.round) == (Phase.TRAIN, 4)
    rig.restart()
    join(rig, "h", "h-2", recover=True, address="h:7001", checkpoint_round=3)
    task = rig.task
    assert (task.phase, task.attempt) == (Phase.WAITING_FOR_NODES, 2)
    assert task.participants["h"].joined and not task.participants["c1"].joined
    failed = [c for c in rig.commands if c.phase == Phase.FAILED]
    assert len(failed) == 1 and failed[0].attempt == 1
    assert "node 'h' restarted during TRAIN round 4" in failed[0].reason
    assert rig.commands[-1].attempt == 2
    join(rig, "c1", "c1-2", recover=True, checkpoint_round=3, checkpoint_batch=5)
    join(rig, "c2", "c2-2", recover=True, checkpoint_round=3)
    assert rig.commands[-1].phase == Phase.PSI
    assert (rig.commands[-1].resume_round, rig.commands[-1].resume_batch) == (3, 0)


def test_a_join_from_before_a_restart_counts_once_heard_from(store: TaskStore) -> None:
    """The chaos test's case: the host joined, then died with its embedded coordinator while
    the task waited for the others. Its new process restarts the coordinator but joins late
    (models to build); the collaborators, quicker, must not start PSI with the dead host's
    join, and the task waits for the new one instead of failing heartbeat_lost."""
    rig = Rig(store)
    rig.create()
    join(rig, "h", "h-1")
    rig.restart()
    rig.clock.now += 3
    join(rig, "c1", "c1-2", recover=True)
    join(rig, "c2", "c2-2", recover=True)
    assert rig.task.phase == Phase.WAITING_FOR_NODES
    rig.clock.now += 2.5  # the old host silent 5.5 s > its schedule_timeout (5 s)
    rig.lc.tick()
    task = rig.task
    assert task.phase == Phase.WAITING_FOR_NODES and not task.participants["h"].joined, task
    join(rig, "h", "h-2", recover=True)
    assert rig.commands[-1].phase == Phase.PSI and rig.task.attempt == 1


def test_a_live_node_confirms_its_join_by_heartbeat_after_a_restart(store: TaskStore) -> None:
    """A standalone coordinator restarted while the host waited: the host heartbeats (it does
    not join again), which counts, and the task starts when the others join."""
    rig = Rig(store)
    rig.create()
    join(rig, "h", "h-1")
    rig.restart()
    join(rig, "c1", "c1-1")
    join(rig, "c2", "c2-1")
    assert rig.task.phase == Phase.WAITING_FOR_NODES
    rig.lc.heartbeat("t", "h")
    assert rig.commands[-1].phase == Phase.PSI


def test_restarted_node_without_recover_is_refused(store: TaskStore) -> None:
    rig = Rig(store)
    training(rig, 1)
    with pytest.raises(WrongPhase, match="If its earlier process died, restart every party"):
        join(rig, "c1", "c1-2")
    assert (rig.task.phase, rig.task.round, rig.task.attempt) == (Phase.TRAIN, 2, 1)


def test_same_process_rejoining_is_a_reconnect(store: TaskStore) -> None:
    rig = Rig(store)
    training(rig, 1)
    join(rig, "c1", "c1-1", recover=True)
    assert (rig.task.phase, rig.task.round, rig.task.attempt) == (Phase.TRAIN, 2, 1)


def test_recover_join_restarts_an_ended_task(store: TaskStore) -> None:
    rig = Rig(store)
    training(rig, 2)
    rig.report("c2", Phase.TRAIN, 3, error="out of memory")
    assert rig.task.phase == Phase.FAILED
    with pytest.raises(WrongPhase, match="restart every party with recover=True"):
        join(rig, "h", "h-2")
    join(rig, "h", "h-2", recover=True)
    assert (rig.task.phase, rig.task.attempt) == (Phase.WAITING_FOR_NODES, 2)
    assert rig.task.spec.recover


def test_reports_of_earlier_processes_are_ignored(store: TaskStore) -> None:
    """A node of the interrupted attempt that dies late (its error) or a stale process of a
    node that restarted must not fail the new attempt."""
    rig = Rig(store)
    training(rig, 1)
    join(rig, "h", "h-2", recover=True)
    rig.report("c1", Phase.TRAIN, 2, error="host unreachable", incarnation="c1-1")
    assert rig.task.phase == Phase.WAITING_FOR_NODES
    join(rig, "c1", "c1-2", recover=True)
    rig.report("c1", Phase.TRAIN, 2, error="host unreachable", incarnation="c1-1")
    assert rig.task.phase == Phase.WAITING_FOR_NODES
    rig.report("c2", Phase.PSI, error="cannot load ids", incarnation="c2-9")
    assert rig.task.phase == Phase.FAILED  # a process never seen before: a real failure


@pytest.mark.parametrize(
    ("host", "after_split"),
    [
        ({"test_requested": True}, (Phase.TEST, 3)),
        ({"test_requested": True, "finished": True}, (Phase.TEST, 3)),
        ({"finished": True}, (Phase.FINISHED, 3)),
        ({}, (Phase.TRAIN, 4)),
    ],
    ids=["test-pending", "last-round-test-pending", "finished", "train-on"],
)
def test_resume_at_a_round_end_follows_the_hosts_split_report(
    store: TaskStore, host: dict, after_split: tuple
) -> None:
    rig = Rig(store)
    training(rig, 3)
    for n in NODES:
        join(rig, n, f"{n}-2", recover=True, checkpoint_round=3)
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT, host=host)
    assert (rig.task.phase, rig.task.round) == after_split
    if after_split[0] == Phase.TEST:
        rig.all_report(Phase.TEST, 3)
        expected = Phase.FINISHED if host.get("finished") else Phase.TRAIN
        assert rig.task.phase == expected


def test_resume_inside_a_round(store: TaskStore) -> None:
    rig = Rig(store)
    training(rig, 2)
    rig.restart()
    join(rig, "h", "h-2", recover=True, checkpoint_round=2, checkpoint_batch=40)
    join(rig, "c1", "c1-2", recover=True, checkpoint_round=2, checkpoint_batch=30)
    join(rig, "c2", "c2-2", recover=True, checkpoint_round=2, checkpoint_batch=40)
    psi = rig.commands[-1]
    assert (psi.resume_round, psi.resume_batch) == (2, 30)
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT, host={"test_requested": True})  # ignored mid-round
    assert (rig.task.phase, rig.task.round, rig.commands[-1].resume_batch) == (Phase.TRAIN, 3, 30)


def test_a_node_without_recover_makes_every_party_start_afresh(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    join(rig, "h", "h-1", recover=True, checkpoint_round=4)
    join(rig, "c1", "c1-1", recover=True, checkpoint_round=4, checkpoint_batch=3)
    join(rig, "c2", "c2-1")
    assert (rig.commands[-1].resume_round, rig.commands[-1].resume_batch) == (0, 0)


@pytest.mark.parametrize("incarnation", ["x" * 65, "a b", "../x"])
def test_malformed_incarnation_is_refused(store: TaskStore, incarnation: str) -> None:
    rig = Rig(store)
    rig.create()
    with pytest.raises(InvalidRequest, match="incarnation"):
        join(rig, "h", incarnation)


def test_database_of_an_earlier_version_is_upgraded(tmp_path: Path) -> None:
    """Tables written before the recovery columns existed gain them, with defaults."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE,
          participants TEXT NOT NULL, schedule_timeout_s REAL NOT NULL,
          calculation_timeout_s REAL NOT NULL, recover INTEGER NOT NULL, mode TEXT NOT NULL,
          phase INTEGER NOT NULL, round INTEGER NOT NULL, reason TEXT NOT NULL,
          failure_kind TEXT NOT NULL, metrics TEXT NOT NULL, resume_round INTEGER NOT NULL,
          reports TEXT NOT NULL, finish_after_test INTEGER NOT NULL, phase_started REAL NOT NULL,
          deadline REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE participants (task_id TEXT NOT NULL, node_id TEXT NOT NULL,
          role INTEGER NOT NULL, feature_key TEXT NOT NULL, address TEXT NOT NULL,
          joined INTEGER NOT NULL, checkpoint_round INTEGER NOT NULL,
          schedule_timeout_s REAL NOT NULL, calculation_timeout_s REAL NOT NULL,
          agreement TEXT NOT NULL, joined_at REAL NOT NULL, last_heartbeat REAL NOT NULL,
          PRIMARY KEY (task_id, node_id));
        INSERT INTO tasks (task_id, participants, schedule_timeout_s, calculation_timeout_s,
          recover, mode, phase, round, reason, failure_kind, metrics, resume_round, reports,
          finish_after_test, phase_started, deadline, updated)
          VALUES ('t', '["h", "c1"]', 5, 20, 0, 'plain', 4, 2, '', '', '{}', 0, '{}', 0, 0, 0, 0);
        INSERT INTO participants VALUES ('t', 'h', 1, 'fk-h', 'h:1', 1, 1, 0, 0, '{}', 0, 0);
        """
    )
    db.close()
    upgraded = SqliteTaskStore(path)
    (task,) = upgraded.load_all()
    assert (task.phase, task.round, task.attempt, task.resume_batch) == (Phase.TRAIN, 2, 1, 0)
    assert task.participants["h"].position() == (1, 0)
    task.participants["h"].incarnation = "h-1"
    upgraded.save(task)
    assert upgraded.load_all()[0].participants["h"].incarnation == "h-1"
    upgraded.close()


def test_task_cli_takes_recover_from_the_environment() -> None:
    """compose's create-task: `HETERONN_RECOVER=true docker compose up` resumes."""
    argv = ["create", "--task-id", "t", "--participants", "h,c1"]
    assert task_cli._parser({"HETERONN_TASK_RECOVER": "true"}).parse_args(argv).recover
    assert not task_cli._parser({}).parse_args(argv).recover
