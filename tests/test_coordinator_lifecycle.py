"""The coordinator's state machine on a fake clock, run against every TaskStore backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.domain import Command, Participant, Phase, Report, Role, TaskSpec
from services.errors import (
    InvalidRequest,
    NotAParticipant,
    TaskAlreadyExists,
    TaskNotFound,
    WrongPhase,
)
from services.lifecycle import Lifecycle
from services.store import InMemoryTaskStore, SqliteTaskStore, TaskStore

NODES = ["h", "c1", "c2"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    s: TaskStore = (
        InMemoryTaskStore() if request.param == "memory" else SqliteTaskStore(tmp_path / "c.db")
    )
    yield s
    s.close()


class Rig:
    """A lifecycle with a fake clock that records every published command."""

    def __init__(self, store: TaskStore):
        self.store = store
        self.clock = Clock()
        self.commands: list[Command] = []
        self.lc = Lifecycle(store, self.commands.append, clock=self.clock, address="coord:1")

    def restart(self) -> None:
        self.commands.clear()
        self.lc = Lifecycle(self.store, self.commands.append, clock=self.clock)

    def create(self, task_id: str = "t", **kw: object) -> None:
        spec = dict(
            participants=list(NODES),
            schedule_timeout_s=5.0,
            calculation_timeout_s=20.0,
            mode="plain",
        )
        spec.update(kw)
        self.lc.create_task(TaskSpec(task_id=task_id, **spec))  # type: ignore[arg-type]

    def join(self, node: str, task_id: str = "t", **kw: object) -> None:
        fields: dict[str, object] = dict(
            role=Role.HOST if node == "h" else Role.COLLABORATOR,
            feature_key=f"fk-{node}",
            address=f"{node}:7000",
        )
        fields.update(kw)
        self.lc.join(task_id, Participant(node_id=node, **fields))  # type: ignore[arg-type]

    def join_all(self, **kw: object) -> None:
        for n in NODES:
            self.join(n, **kw)

    def report(self, node: str, phase: Phase, round_: int = 0, **kw: object) -> None:
        self.lc.report(Report(task_id="t", node_id=node, phase=phase, round=round_, **kw))  # type: ignore[arg-type]

    def all_report(self, phase: Phase, round_: int = 0, host: dict | None = None) -> None:
        for n in NODES:
            extra = dict(host or {}) if n == "h" else {}
            if phase == Phase.SPLIT:
                extra.update(train_size=100, test_size=20, split_digest="d")
            if phase == Phase.TRAIN:
                extra.setdefault("checkpoint_round", round_)
            self.report(n, phase, round_, **extra)

    @property
    def task(self):
        return self.lc.get_task("t")

    def phases(self) -> list[tuple[Phase, int]]:
        return [(c.phase, c.round) for c in self.commands]


def test_happy_path_through_test_and_finish(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    assert rig.task.phase == Phase.PSI
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT)
    rig.all_report(Phase.TRAIN, 1, host={"test_requested": True})
    rig.all_report(Phase.TEST, 1, host={"metrics": {"accuracy": 0.5}})
    rig.all_report(Phase.TRAIN, 2)
    rig.all_report(Phase.TRAIN, 3, host={"finished": True, "test_requested": True})
    assert rig.task.phase == Phase.TEST
    rig.all_report(Phase.TEST, 3, host={"metrics": {"accuracy": 0.9}})
    assert rig.phases() == [
        (Phase.WAITING_FOR_NODES, 0),
        (Phase.PSI, 0),
        (Phase.SPLIT, 0),
        (Phase.TRAIN, 1),
        (Phase.TEST, 1),
        (Phase.TRAIN, 2),
        (Phase.TRAIN, 3),
        (Phase.TEST, 3),
        (Phase.FINISHED, 3),
    ]
    task = rig.task
    assert task.metrics == {"accuracy": 0.9}
    assert {p.checkpoint_round for p in task.participants.values()} == {3}
    psi = rig.commands[1]
    # calculation_timeout (20 s) plus schedule_timeout (5 s) of grace
    assert psi.deadline_unix_ms == int((rig.clock.now + 25.0) * 1000)
    assert [p.address for p in psi.participants] == ["h:7000", "c1:7000", "c2:7000"]


def test_finished_without_test(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT)
    rig.all_report(Phase.TRAIN, 1, host={"finished": True})
    assert rig.task.phase == Phase.FINISHED


def test_spec_validation(store: TaskStore) -> None:
    rig = Rig(store)
    with pytest.raises(InvalidRequest, match="at least one collaborator"):
        rig.create(participants=["h"])
    with pytest.raises(InvalidRequest, match="more than once"):
        rig.create(participants=["h", "c", "c"])
    with pytest.raises(InvalidRequest, match="participant '' is not a valid id"):
        rig.create(participants=["h", ""])
    with pytest.raises(InvalidRequest, match="schedule_timeout"):
        rig.create(schedule_timeout_s=0.0)
    with pytest.raises(InvalidRequest, match="mode"):
        rig.create(mode="fast")


def test_create_is_idempotent_and_refuses_conflicts(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("h")
    rig.create()  # same participants: returns the running task
    assert rig.task.participants["h"].joined
    with pytest.raises(TaskAlreadyExists, match="use another task id"):
        rig.create(participants=["h", "x"])
    rig.lc.cancel_task("t", "test")
    with pytest.raises(TaskAlreadyExists, match="recover=true"):
        rig.create()


def test_join_errors_name_the_node_and_the_fix(store: TaskStore) -> None:
    rig = Rig(store)
    with pytest.raises(TaskNotFound, match=r"task 't' is not known to the coordinator at coord:1"):
        rig.join("h")
    rig.create()
    with pytest.raises(NotAParticipant, match=r"node 'eve' .* 'h', 'c1', 'c2'.*nodes=\[\.\.\.\]"):
        rig.join("eve")
    with pytest.raises(InvalidRequest, match="without a role"):
        rig.join("c1", role=Role.UNSPECIFIED)
    assert rig.task.phase == Phase.WAITING_FOR_NODES


@pytest.mark.parametrize(
    ("second", "match"),
    [
        ({"role": Role.HOST}, "two hosts: 'h' and 'c1'"),
        ({"feature_key": "fk-h"}, "'h' and 'c1' .* both use feature_key 'fk-h'"),
        (
            {"agreement": {"mode": "secure"}},
            "disagree on 'mode': 'h' has plain, 'c1' has secure; every party",
        ),
    ],
)
def test_conflicting_join_fails_the_task(store: TaskStore, second: dict, match: str) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("h", agreement={"mode": "plain"})
    with pytest.raises(InvalidRequest, match=match):
        rig.join("c1", **second)
    assert rig.task.phase == Phase.FAILED
    assert rig.commands[-1].phase == Phase.FAILED
    with pytest.raises(WrongPhase, match="restart every party with recover=True"):
        rig.join("c2")


def test_agreement_conflict_names_only_the_differing_setting(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("h", agreement={"secure": "ckks(N=8192,q=60-60);lr=0.05;momentum=0.9"})
    with pytest.raises(InvalidRequest) as refused:
        rig.join("c1", agreement={"secure": "ckks(N=8192,q=60-60);lr=0.1;momentum=0.9"})
    assert "'h' has lr=0.05, 'c1' has lr=0.1; every party must use the same secure" in str(
        refused.value
    )
    assert "ckks" not in str(refused.value)


def test_all_collaborators_fails(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    for n in NODES:
        rig.join(n, role=Role.COLLABORATOR)
    assert rig.task.phase == Phase.FAILED
    assert "exactly one must be the host" in rig.task.reason


def test_rejoin_while_waiting_updates_address_but_not_clock(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("c1")
    rig.clock.now += 3
    rig.join("c1", address="c1:9999")
    assert rig.task.participants["c1"].address == "c1:9999"
    rig.clock.now += 2.5
    rig.lc.tick()
    assert rig.task.phase == Phase.FAILED  # 5.5 s after the first join


def test_join_timeout_uses_each_nodes_own_schedule_timeout(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("h", schedule_timeout_s=2.0)
    rig.join("c1")
    rig.clock.now += 1.9
    rig.lc.tick()
    assert rig.task.phase == Phase.WAITING_FOR_NODES
    rig.clock.now += 0.2
    rig.lc.tick()
    task = rig.task
    assert task.phase == Phase.FAILED
    assert task.reason == (
        "participant(s) 'c2' did not join task t within 2 s (schedule_timeout of 'h'); "
        "start its node with this task id and coordinator address"
    )


def test_heartbeat_loss_and_host_timeouts(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all(schedule_timeout_s=3.0)  # host's value wins over the spec's 5 s
    for _ in range(4):
        rig.clock.now += 1.0
        rig.lc.heartbeat("t", "h")
        rig.lc.heartbeat("t", "c2")
        rig.lc.tick()
    task = rig.task
    assert task.phase == Phase.FAILED
    assert task.reason.startswith("node 'c1' stopped sending heartbeats 4.0 s ago during PSI;")
    assert "recover=True" in task.reason
    with pytest.raises(WrongPhase, match="stopped sending heartbeats"):
        rig.lc.heartbeat("t", "h")


def test_liveness_floor_protects_tiny_schedule_timeouts(store: TaskStore) -> None:
    rig = Rig(store)
    rig.lc = Lifecycle(store, rig.commands.append, clock=rig.clock, min_liveness_s=3.0)
    rig.create(schedule_timeout_s=0.5)
    rig.join_all()
    rig.clock.now += 2.9
    rig.lc.tick()
    assert rig.task.phase == Phase.PSI
    rig.clock.now += 0.2
    rig.lc.tick()
    assert "stopped sending heartbeats 3.1 s ago" in rig.task.reason


def test_phase_timeout_names_the_slow_nodes(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all(calculation_timeout_s=10.0)
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT)
    rig.report("h", Phase.TRAIN, 1)
    rig.report("c2", Phase.TRAIN, 1)
    for second in range(16):  # calculation_timeout 10 s + schedule_timeout 5 s of grace
        if second == 14:
            assert rig.task.reason == "", "failed before the grace period ended"
        rig.clock.now += 1.0
        for n in NODES:
            rig.lc.heartbeat("t", n)
        rig.lc.tick()
    assert rig.task.reason == (
        "phase TRAIN round 1 exceeded calculation_timeout=10 s waiting for 'c1'; "
        "raise calculation_timeout or find why 'c1' is slow"
    )


def test_split_mismatch(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    rig.all_report(Phase.PSI)
    rig.report("c1", Phase.SPLIT, train_size=100, test_size=20, split_digest="d")
    rig.report("c2", Phase.SPLIT, train_size=99, test_size=21, split_digest="e")
    rig.report("h", Phase.SPLIT, train_size=100, test_size=20, split_digest="d")
    assert rig.task.reason == (
        "split_dataset gave different splits on different parties: host 'h' 100 train / 20 "
        "test, 'c1' 100 / 20, 'c2' 99 / 21; split_dataset must be deterministic and identical "
        "on every party"
    )


def test_error_report_fails_with_prefixed_reason(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    rig.report("c2", Phase.PSI, error="ValueError: bad ids")
    assert rig.task.reason == "node 'c2' (phase PSI): ValueError: bad ids"
    assert rig.commands[-1].reason == rig.task.reason


def test_error_before_joining_fails_the_task_at_once(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("h")
    with pytest.raises(WrongPhase, match="join first"):
        rig.report("c1", Phase.PSI)
    rig.report("c1", Phase.WAITING_FOR_NODES, error="collaborator 'c1': feature model failed")
    assert rig.task.phase == Phase.FAILED
    assert rig.commands[-1].reason == "collaborator 'c1': feature model failed"


def test_error_report_that_names_the_node_is_kept_as_is(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    text = "host 'h': collaborator 'c1' sent 64 rows for batch 3; use the same batch_size"
    rig.report("h", Phase.PSI, error=text)
    assert rig.task.reason == text


def test_stale_reports_are_ignored_and_future_ones_refused(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    rig.all_report(Phase.PSI)
    rig.report("h", Phase.PSI)  # duplicate of a finished phase
    with pytest.raises(WrongPhase, match=r"reported TRAIN round 4 .* in phase SPLIT"):
        rig.report("h", Phase.TRAIN, 4)
    assert rig.task.phase == Phase.SPLIT


def test_cancel(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join("h")
    rig.lc.cancel_task("t", "maintenance")
    assert rig.task.reason == "cancelled by operator: maintenance"
    assert rig.commands[-1].phase == Phase.FAILED


def test_recover_resumes_from_minimum_checkpoint(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT)
    rig.all_report(Phase.TRAIN, 1)
    rig.all_report(Phase.TRAIN, 2)
    rig.report("h", Phase.TRAIN, 3, checkpoint_round=3)
    rig.report("c1", Phase.TRAIN, 3, error="killed")
    assert rig.task.phase == Phase.FAILED
    rig.create(recover=True)
    task = rig.task
    assert task.phase == Phase.WAITING_FOR_NODES
    assert not any(p.joined for p in task.participants.values())
    rig.join("h", checkpoint_round=3)
    rig.join("c1", checkpoint_round=2)
    rig.join("c2", checkpoint_round=2)
    assert rig.commands[-1].phase == Phase.PSI and rig.commands[-1].resume_round == 2
    rig.all_report(Phase.PSI)
    rig.all_report(Phase.SPLIT)
    assert (rig.task.phase, rig.task.round) == (Phase.TRAIN, 3)


def test_restart_reloads_tasks_and_restarts_clocks(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create()
    rig.join_all()
    rig.all_report(Phase.PSI)
    rig.report("h", Phase.SPLIT, train_size=100, test_size=20, split_digest="d")
    rig.create("other", participants=["a", "b"])
    rig.lc.cancel_task("other", "x")
    rig.clock.now += 60  # coordinator down for a minute: nobody's fault
    rig.restart()
    assert [t.task_id for t in rig.lc.list_tasks()] == ["t", "other"]
    assert [(c.task_id, c.phase) for c in rig.commands] == [
        ("t", Phase.SPLIT),
        ("other", Phase.FAILED),
    ]
    rig.lc.tick()
    assert rig.task.phase == Phase.SPLIT
    rig.report("c1", Phase.SPLIT, train_size=100, test_size=20, split_digest="d")
    rig.report("c2", Phase.SPLIT, train_size=100, test_size=20, split_digest="d")
    assert (rig.task.phase, rig.task.round) == (Phase.TRAIN, 1)
    assert rig.task.participants["c1"].address == "c1:7000"


def test_store_round_trip(store: TaskStore) -> None:
    rig = Rig(store)
    rig.create(mode="secure")
    rig.join("h", agreement={"lr": "0.1"}, schedule_timeout_s=4.0, checkpoint_round=2)
    rig.lc.heartbeat("t", "h")
    (loaded,) = store.load_all()
    assert loaded == rig.task
