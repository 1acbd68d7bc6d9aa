"""The coordinator's records: tasks, participants, reports and phase commands.

Plain dataclasses, no gRPC or protobuf, so the state machine and the stores can be
tested without a transport. `services.serde` converts them to and from the wire types.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import IntEnum

from wire import limits


class Phase(IntEnum):
    """Same numbers as `heteronn.v1.Phase`."""

    UNSPECIFIED = 0
    WAITING_FOR_NODES = 1
    PSI = 2
    SPLIT = 3
    TRAIN = 4
    TEST = 5
    FINISHED = 6
    FAILED = 7

    @property
    def terminal(self) -> bool:
        return self in (Phase.FINISHED, Phase.FAILED)


class Role(IntEnum):
    """Same numbers as `heteronn.v1.Role`."""

    UNSPECIFIED = 0
    HOST = 1
    COLLABORATOR = 2


#: Order of the work phases inside one round; a report is stale when its
#: (round, order) lies before the task's current one.
PHASE_ORDER = {Phase.PSI: 1, Phase.SPLIT: 2, Phase.TRAIN: 3, Phase.TEST: 4}

MODES = ("plain", "secure")


@dataclass(frozen=True)
class TaskLimits:
    """The coordinator's bounds on tasks (settings of the same names; defaults in
    wire.limits)."""

    max_participants: int = limits.MAX_PARTICIPANTS
    max_tasks: int = limits.MAX_TASKS
    #: Ended tasks are deleted this many seconds after they ended (0: never).
    retention_s: float = limits.RETENTION_S
    #: A task nobody has joined fails this many seconds after its creation.
    unjoined_expiry_s: float = limits.UNJOINED_EXPIRY_S


@dataclass
class TaskSpec:
    """What an operator (or the initiating node) asks the coordinator to run."""

    task_id: str
    participants: list[str]
    schedule_timeout_s: float
    calculation_timeout_s: float
    recover: bool = False
    mode: str = "plain"


@dataclass
class Participant:
    """One node of a task as the coordinator knows it; filled in by its JoinTask."""

    node_id: str
    role: Role = Role.UNSPECIFIED
    feature_key: str = ""
    address: str = ""
    joined: bool = False
    checkpoint_round: int = 0
    #: Batches of round checkpoint_round + 1 in the node's newest checkpoint (0: none).
    checkpoint_batch: int = 0
    #: The node's own timeouts as it joined (0: it gave none).
    schedule_timeout_s: float = 0.0
    calculation_timeout_s: float = 0.0
    agreement: dict[str, str] = field(default_factory=dict)
    joined_at: float = 0.0
    last_heartbeat: float = 0.0
    #: Random per run of the node's process: another one while the task runs = a restart.
    incarnation: str = ""

    def position(self) -> tuple[int, int]:
        """The node's newest checkpoint as (complete rounds, batches of the next round)."""
        return (self.checkpoint_round, self.checkpoint_batch)


@dataclass
class Report:
    """A node's result for one phase (`error` non-empty fails the task)."""

    task_id: str
    node_id: str
    phase: Phase
    round: int = 0
    error: str = ""
    train_size: int = 0
    test_size: int = 0
    split_digest: str = ""
    finished: bool = False
    test_requested: bool = False
    checkpoint_round: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    #: The reporting process's incarnation; reports of an earlier process are ignored.
    incarnation: str = ""


@dataclass
class Task:
    """A task and everything needed to keep driving it after a coordinator restart."""

    spec: TaskSpec
    participants: dict[str, Participant]
    phase: Phase = Phase.WAITING_FOR_NODES
    round: int = 0
    reason: str = ""
    #: Short classification of a failure for metrics (join_timeout, heartbeat_lost, ...).
    failure_kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    resume_round: int = 0
    #: Batches of round resume_round + 1 the resume checkpoint already holds.
    resume_batch: int = 0
    #: 1 for the first run, +1 for each recovery (new attempt).
    attempt: int = 1
    #: Incarnations of nodes of earlier attempts: their late reports are ignored.
    retired: list[str] = field(default_factory=list)
    #: Reports received for the current phase, by node id.
    reports: dict[str, Report] = field(default_factory=dict)
    #: The host's last TRAIN report said finished; FINISHED after the test that follows.
    finish_after_test: bool = False
    #: Wall-clock seconds when the current phase started and when it must be reported.
    phase_started: float = 0.0
    deadline: float = 0.0
    updated: float = 0.0

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    def clone(self) -> Task:
        return copy.deepcopy(self)

    def host(self) -> Participant | None:
        """The joined host, if any."""
        for p in self.participants.values():
            if p.joined and p.role == Role.HOST:
                return p
        return None

    def effective_timeouts(self) -> tuple[float, float, str]:
        """(schedule, calculation, whose): the host's own values once it joined, else the spec's."""
        host = self.host()
        sched, calc, whose = self.spec.schedule_timeout_s, self.spec.calculation_timeout_s, "task"
        if host is not None:
            if host.schedule_timeout_s > 0:
                sched, whose = host.schedule_timeout_s, f"'{host.node_id}'"
            if host.calculation_timeout_s > 0:
                calc = host.calculation_timeout_s
        return sched, calc, whose

    def phase_budget(self) -> float:
        """How long a phase may run before the coordinator fails it: calculation_timeout
        plus a schedule_timeout of grace, so a node's own, more precise timeout (its
        watchdog, or its wait for a peer) reports first and names the culprit."""
        sched, calc, _ = self.effective_timeouts()
        return calc + sched

    def all_timeouts(self) -> list[float]:
        """The spec's timeouts and every joined node's own."""
        own = [t for p in self.participants.values()
               for t in (p.schedule_timeout_s, p.calculation_timeout_s)]
        return [self.spec.schedule_timeout_s, self.spec.calculation_timeout_s, *own]

    def waiting_deadline(self) -> float:
        """While waiting for nodes: when the first joined node's own wait ends (0: none)."""
        ends = [p.joined_at + (p.schedule_timeout_s or self.spec.schedule_timeout_s)
                for p in self.participants.values() if p.joined]
        return min(ends) if ends else 0.0

    def restart_clocks(self, now: float) -> None:
        """After a coordinator restart nobody could heartbeat or report: clocks restart."""
        for p in self.participants.values():
            if p.joined:
                p.last_heartbeat = now
                if self.phase == Phase.WAITING_FOR_NODES:
                    p.joined_at = now
        if self.phase in PHASE_ORDER:
            self.phase_started, self.deadline = now, now + self.phase_budget()
        elif self.phase == Phase.WAITING_FOR_NODES:
            self.deadline = self.waiting_deadline()

    def phase_label(self) -> str:
        if self.phase in (Phase.TRAIN, Phase.TEST):
            return f"{self.phase.name} round {self.round}"
        return self.phase.name


@dataclass(frozen=True)
class Command:
    """What every node must do next; broadcast on each transition, replayed to new watchers."""

    task_id: str
    phase: Phase
    round: int
    deadline_unix_ms: int
    reason: str
    participants: tuple[Participant, ...]
    resume_round: int
    resume_batch: int = 0
    attempt: int = 1

    @classmethod
    def of(cls, task: Task) -> Command:
        return cls(
            task_id=task.task_id,
            phase=task.phase,
            round=task.round,
            deadline_unix_ms=unix_ms(task.deadline),
            reason=task.reason,
            participants=tuple(copy.deepcopy(p) for p in task.participants.values()),
            resume_round=task.resume_round,
            resume_batch=task.resume_batch,
            attempt=task.attempt,
        )


def unix_ms(seconds: float) -> int:
    """Unix milliseconds of a wall-clock time; 0 for none or one no int64 can hold."""
    if not (0 < seconds < 2**53 / 1000):  # also False for NaN and infinities
        return 0
    return int(seconds * 1000)
