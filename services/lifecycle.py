"""The task state machine: WAITING_FOR_NODES → PSI → SPLIT → TRAIN r → [TEST r] → …
→ FINISHED | FAILED(reason).

Pure Python, no gRPC: every request is a method call under one lock, every change is
written through to the store, and every phase transition publishes a Command to the hub.
`tick()` enforces the deadlines (join, phase, liveness); a thread calls it a few times
per second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from services import joining, progress, verdicts
from services.domain import (
    PHASE_ORDER,
    Command,
    Participant,
    Phase,
    Report,
    Task,
    TaskLimits,
    TaskSpec,
)
from services.errors import (
    InvalidRequest,
    NotAParticipant,
    OverLimit,
    TaskAlreadyExists,
    TaskNotFound,
    WrongPhase,
)
from services.store import TaskStore
from services.unconfirmed import UnconfirmedJoins
from wire.limits import MAX_TIMEOUT_S, clip, one_line, shown

log = logging.getLogger("heteronn.coordinator")


class Observer(Protocol):
    """Told about every change (metrics); must not call back into the lifecycle."""

    def task_changed(self, task: Task) -> None: ...

    def task_failed(self, task: Task) -> None: ...

    def task_deleted(self, task: Task) -> None: ...


class Lifecycle:
    def __init__(
        self,
        store: TaskStore,
        publish: Callable[[Command], None],
        *,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        address: str = "",
        min_liveness_s: float = 0.0,
        limits: TaskLimits | None = None,
        forget: Callable[[str], None] | None = None,
    ):
        self._store = store
        self._publish = publish
        self._forget = forget
        self._clock = clock
        self._observer = observer
        #: How nodes reach this coordinator; quoted in "task not known" errors.
        self.address = address
        self._min_liveness_s = min_liveness_s
        self.limits = limits or TaskLimits()
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        #: Joins recorded before this coordinator started, not confirmed since.
        self._unconfirmed = UnconfirmedJoins()
        now = clock()
        for task in store.load_all():
            self._tasks[task.task_id] = task
            try:
                self._restore(task, now)
            except Exception as exc:  # one bad stored task must not stop the coordinator
                log.exception("task %s could not be restored", shown(task.task_id))
                self._fail(task, "invalid_state", (
                    f"the coordinator could not restore task '{task.task_id}' after a restart "
                    f"({type(exc).__name__}); create it again under a new task id"))

    def _restore(self, task: Task, now: float) -> None:
        """Resume driving a task loaded from the store (clocks restart, texts are cut to
        today's limits, impossible timeouts fail it)."""
        task.reason = clip(task.reason)
        if not task.phase.terminal:
            if not all(0 <= t <= MAX_TIMEOUT_S for t in task.all_timeouts()):
                raise ValueError(f"a stored timeout is outside 0..{MAX_TIMEOUT_S:g} s")
            task.restart_clocks(now)
            self._store.save(task)
            self._unconfirmed.restored(task)
        self._notify(task)
        self._publish(Command.of(task))

    # --- operators -------------------------------------------------------------------

    def create_task(self, spec: TaskSpec) -> Task:
        joining.validate_spec(spec, self.limits)
        with self._lock:
            tid = spec.task_id
            old = self._tasks.get(tid)
            if old is None:
                if len(self._tasks) >= self.limits.max_tasks:
                    raise OverLimit(
                        f"the coordinator keeps {len(self._tasks)} tasks, its limit "
                        f"(setting max_tasks); delete ended tasks (heteronn task delete) or "
                        "raise max_tasks"
                    )
                task = Task(spec=spec, participants={n: Participant(n) for n in spec.participants})
                log.info("task %s created with participants %s", tid, spec.participants)
                self._enter(task, Phase.WAITING_FOR_NODES, 0)
                self._tasks[tid] = task
                return task.clone()
            action, reason = joining.recreate(old, spec)
            if action == "refuse":
                raise TaskAlreadyExists(reason)
            if action == "same":
                return old.clone()
            return self._new_attempt(old, spec).clone()

    def get_task(self, task_id: str) -> Task:
        with self._lock:
            return self._get(task_id).clone()

    def find(self, task_id: str) -> Task | None:
        """The task, or None when there is none (authorisation decides what to say)."""
        with self._lock:
            task = self._tasks.get(task_id)
            return task.clone() if task is not None else None

    def list_tasks(self) -> list[Task]:
        with self._lock:
            return [t.clone() for t in self._tasks.values()]

    def cancel_task(self, task_id: str, reason: str) -> Task:
        with self._lock:
            task = self._get(task_id)
            if not task.phase.terminal:
                why = clip(reason) or "no reason given"
                self._fail(task, "cancelled", f"cancelled by operator: {why}")
            return task.clone()

    def delete_task(self, task_id: str) -> Task:
        """Forget an ended task (its id becomes free); a running one must be cancelled first."""
        with self._lock:
            task = self._get(task_id)
            if not task.phase.terminal:
                raise WrongPhase(
                    f"task '{task_id}' is still running (phase {task.phase_label()}); cancel it "
                    "first (heteronn task cancel), then delete it"
                )
            self._delete(task)
            return task.clone()

    def _delete(self, task: Task) -> None:
        log.info("task %s deleted", task.task_id)
        del self._tasks[task.task_id]
        self._store.delete(task.task_id)
        if self._forget is not None:
            self._forget(task.task_id)
        if self._observer is not None:
            self._observer.task_deleted(task)

    # --- nodes -----------------------------------------------------------------------

    def join(self, task_id: str, node: Participant, recover: bool = False) -> Task:
        """`node` carries role, feature_key, address, checkpoint position, incarnation, own
        timeouts and agreement as the JoinTaskRequest gave them. With `recover` a node that
        restarted resumes the task: an ended task, or a running one whose state died with the
        node's earlier process, starts a new attempt (see `_restarted`)."""
        with self._lock:
            task = self._get(task_id)
            nid = joining.valid_id("node_id", node.node_id)
            self._participant(task, nid)
            joining.validate_join_request(task_id, node)
            if task.phase.terminal:
                if not recover:
                    raise WrongPhase(progress.ended(task, f"node '{nid}' cannot join it"))
                log.info("task %s: node %s restarted with recover after %s", task_id, nid,
                         task.phase.name)
                task = self._new_attempt(task, task.spec)
            elif task.phase != Phase.WAITING_FOR_NODES:
                old = task.participants[nid]
                if old.joined and joining.same_join(old, node):
                    return task.clone()
                task = self._restarted(task, nid, recover)
            old = task.participants[nid]
            problem = joining.conflict_with_others(task, node)
            if problem:
                self._fail(task, "invalid_join", problem)
                raise InvalidRequest(problem)
            now = self._clock()
            node.joined, node.joined_at, node.last_heartbeat = True, now, now
            if old.joined:  # a re-join updates the node's details, not its join clock
                node.joined_at = old.joined_at
            task.participants[nid] = node
            log.info("task %s: node %s joined as %s from %s (checkpoint round %d batch %d)",
                     task_id, nid, node.role.name, node.address, *node.position())
            self._unconfirmed.confirm(task_id, nid)
            if self._unconfirmed.everyone_joined(task):
                self._all_joined(task)
            else:
                task.deadline = task.waiting_deadline()
                self._commit(task, publish=False)
            return task.clone()

    def report(self, rep: Report) -> None:
        joining.validate_report(rep)
        with self._lock:
            task = self._get(rep.task_id)
            node = self._participant(task, rep.node_id)
            if joining.stale_report(task, node, rep):
                log.info("task %s: ignored a %s report from an earlier process of node %s",
                         task.task_id, rep.phase.name, rep.node_id)
                return
            if task.phase.terminal:
                late = f"the report of node '{rep.node_id}' is late"
                raise WrongPhase(progress.ended(task, late))
            if rep.error:  # even before it joined: a node that cannot start ends the task now
                self._fail(task, "node_error", verdicts.name_node(rep))
                return
            if not node.joined:
                raise WrongPhase(
                    f"node '{rep.node_id}' reported for task '{task.task_id}' without joining it "
                    "(in this attempt); join first"
                )
            if (rep.phase, rep.round) == (task.phase, task.round) and rep.phase in PHASE_ORDER:
                task.reports[rep.node_id] = rep
                self._advance(task)
                return
            if progress.order(rep.phase, rep.round) < progress.order(task.phase, task.round):
                log.debug("task %s: stale %s round %d report from %s ignored",
                          task.task_id, rep.phase.name, rep.round, rep.node_id)
                return
            raise WrongPhase(
                f"node '{rep.node_id}' reported {rep.phase.name} round {rep.round} but task "
                f"'{task.task_id}' is in phase {task.phase_label()}; the node is out of step"
            )

    def heartbeat(self, task_id: str, node_id: str) -> None:
        with self._lock:
            task = self._get(task_id)
            node = self._participant(task, node_id)
            if task.phase == Phase.FAILED:
                raise WrongPhase(progress.ended(task, "stop"))
            if task.phase == Phase.FINISHED:
                return
            if not node.joined:
                raise WrongPhase(f"node '{node_id}' has not joined task '{task_id}'; join first")
            node.last_heartbeat = self._clock()
            self._store.save_heartbeat(task_id, node_id, node.last_heartbeat)
            confirmed = self._unconfirmed.confirm(task_id, node_id)
            if confirmed and self._unconfirmed.everyone_joined(task):
                self._all_joined(task)

    def check_watch(self, task_id: str, node_id: str) -> None:
        """A watcher must name a known task and (if it names itself) be a participant."""
        with self._lock:
            task = self._get(task_id)
            if node_id:
                self._participant(task, node_id)

    # --- deadlines -------------------------------------------------------------------

    def tick(self) -> None:
        now = self._clock()
        retention = self.limits.retention_s
        with self._lock:
            for task in list(self._tasks.values()):
                if task.phase.terminal:
                    if retention and now - task.updated > retention:
                        self._delete(task)
                    continue
                self._unjoin_silent(task, now)
                verdict = verdicts.overdue(
                    task, now, self._min_liveness_s, self.limits.unjoined_expiry_s
                )
                if verdict is not None:
                    self._fail(task, *verdict)

    def _unjoin_silent(self, task: Task, now: float) -> None:
        """Un-join the nodes restored from the store that stayed silent (UnconfirmedJoins):
        a recover join of their new process joins them again."""
        for nid in self._unconfirmed.silent(task, now, self._min_liveness_s):
            log.info("task %s: node %s joined before the coordinator restarted and has "
                     "been silent since; it must join again", task.task_id, nid)
            task.participants[nid].joined = False
            self._commit(task, publish=False)

    # --- transitions -----------------------------------------------------------------

    def _all_joined(self, task: Task) -> None:
        if task.host() is None:
            self._fail(task, "invalid_join", (
                f"every participant of task '{task.task_id}' joined as a collaborator; exactly one "
                "must be the host (the party that holds the labels)"))
            return
        # A node that does not recover joins at (0, 0): then every party starts afresh.
        task.resume_round, task.resume_batch = min(
            p.position() for p in task.participants.values()
        )
        log.info("task %s: all %d nodes joined (attempt %d); resume at round %d batch %d",
                 task.task_id, len(task.participants), task.attempt, task.resume_round,
                 task.resume_batch)
        self._enter(task, Phase.PSI, 0)

    def _advance(self, task: Task) -> None:
        step = progress.after_reports(task)
        if step is None:
            self._commit(task, publish=False)
        elif step.failure is not None:
            self._fail(task, *step.failure)
        else:
            self._enter(task, step.phase, step.round)

    def _restarted(self, task: Task, nid: str, recover: bool) -> Task:
        """Node `nid` joins a running task as a new process: its earlier process, and the
        state of this attempt with it, is gone. With recover the attempt is interrupted (every
        node of it stops) and a new one starts; without, the join is refused."""
        label = task.phase_label()
        if not recover:
            raise WrongPhase(
                f"task '{task.task_id}' is already in phase {label}; node '{nid}' cannot join "
                "it now. If its earlier process died, restart every party with recover=True "
                "to resume it; otherwise cancel it or use another task id"
            )
        self._fail(task, "interrupted", (
            f"node '{nid}' restarted during {label} and lost this attempt's state; the task "
            "resumes as a new attempt from the newest checkpoint every party has: restart every "
            "party with recover=True"))
        return self._new_attempt(task, task.spec)

    def _new_attempt(self, old: Task, spec: TaskSpec) -> Task:
        """A fresh run of an ended task, keeping its metrics; nodes resume from checkpoints."""
        log.info("task %s: attempt %d (recover) after %s", old.task_id, old.attempt + 1,
                 old.phase.name)
        retired = old.retired + [p.incarnation for p in old.participants.values()
                                 if p.incarnation]
        task = Task(
            spec=replace(spec, recover=True),
            participants={n: Participant(n) for n in spec.participants},
            metrics=old.metrics,
            attempt=old.attempt + 1,
            retired=retired[-joining.MAX_RETIRED:],
        )
        self._tasks[task.task_id] = task
        self._enter(task, Phase.WAITING_FOR_NODES, 0)
        return task

    def _enter(self, task: Task, phase: Phase, round_: int) -> None:
        now = self._clock()
        task.phase, task.round, task.reports = phase, round_, {}
        task.phase_started = now
        if phase in PHASE_ORDER:
            task.deadline = now + task.phase_budget()
        elif phase == Phase.WAITING_FOR_NODES:
            task.deadline = task.waiting_deadline()
        else:
            task.deadline = 0.0
        log.info("task %s -> %s", task.task_id, task.phase_label())
        self._commit(task)

    def _fail(self, task: Task, kind: str, reason: str) -> None:
        reason = clip(reason)
        log.warning("task %s FAILED (%s): %s", task.task_id, kind, one_line(reason))
        task.reason, task.failure_kind = reason, kind
        self._enter(task, Phase.FAILED, task.round)
        if self._observer is not None:
            self._observer.task_failed(task)

    def _commit(self, task: Task, publish: bool = True) -> None:
        task.updated = self._clock()
        self._store.save(task)
        self._notify(task)
        if publish:
            self._publish(Command.of(task))

    # --- helpers ---------------------------------------------------------------------

    def _notify(self, task: Task) -> None:
        if self._observer is not None:
            self._observer.task_changed(task)

    def _get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            where = f" at {self.address}" if self.address else ""
            raise TaskNotFound(
                f"task {shown(task_id)} is not known to the coordinator{where}; create it first "
                "(heteronn task create ...) or check the task id"
            )
        return task

    def _participant(self, task: Task, node_id: str) -> Participant:
        node = task.participants.get(node_id)
        if node is None:
            raise NotAParticipant(
                f"node {shown(node_id)} is not a participant of task '{task.task_id}' "
                f"(participants: {joining.names(task.spec.participants)}); add it to nodes=[...] "
                "of every party "
                "(or --participants of `heteronn task create`) or fix the node id"
            )
        return node
