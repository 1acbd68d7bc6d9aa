"""Where a task goes once every participant has reported its phase: pure decisions on task
state (no store, no clock, no lock). The lifecycle applies them; `verdicts` says why a task
fails when a deadline passes, this module what comes after a phase that ended well."""

from __future__ import annotations

from dataclasses import dataclass

from services import verdicts
from services.domain import PHASE_ORDER, Phase, Report, Task


@dataclass(frozen=True)
class Step:
    """Enter `phase` at `round`, or fail with `failure` = (kind, reason)."""

    phase: Phase = Phase.FAILED
    round: int = 0
    failure: tuple[str, str] | None = None


def after_reports(task: Task) -> Step | None:
    """The next step of `task`, or None while a participant has not reported the current
    phase. Records what the reports carry on the task (checkpoint positions after TRAIN,
    the host's metrics after TEST, whether the task finishes after its test)."""
    if any(p.node_id not in task.reports for p in task.participants.values()):
        return None
    host = task.host()
    assert host is not None
    hrep = task.reports[host.node_id]
    if task.phase == Phase.PSI:
        return Step(Phase.SPLIT, 0)
    if task.phase == Phase.SPLIT:
        mismatch = verdicts.split_mismatch(task, host.node_id)
        if mismatch:
            return Step(failure=("split_mismatch", mismatch))
        if task.resume_round and not task.resume_batch:
            # Resuming at the end of round r: the host's SPLIT report says what that round's
            # TRAIN report said, and whether its test is still to run.
            return after_round(task, task.resume_round, hrep)
        return Step(Phase.TRAIN, task.resume_round + 1)
    if task.phase == Phase.TRAIN:
        for nid, rep in task.reports.items():
            task.participants[nid].checkpoint_round = rep.checkpoint_round or task.round
            task.participants[nid].checkpoint_batch = 0
        return after_round(task, task.round, hrep)
    if task.phase == Phase.TEST:
        task.metrics = dict(hrep.metrics)
        if task.finish_after_test:
            return Step(Phase.FINISHED, task.round)
        return Step(Phase.TRAIN, task.round + 1)
    raise AssertionError(f"no reports are collected in phase {task.phase.name}")


def after_round(task: Task, round_: int, hrep: Report) -> Step:
    """Round `round_` is trained: its test if asked, then FINISHED or the next round."""
    task.finish_after_test = hrep.finished
    if hrep.test_requested:
        return Step(Phase.TEST, round_)
    if hrep.finished:
        return Step(Phase.FINISHED, round_)
    return Step(Phase.TRAIN, round_ + 1)


def order(phase: Phase, round_: int) -> tuple[int, int]:
    """Sort key of a (phase, round): a report older than the task's position is stale."""
    return (round_, PHASE_ORDER.get(phase, 0))


def ended(task: Task, what: str) -> str:
    """Why `what` cannot happen to an ended task, and how to run it again."""
    if task.phase == Phase.FAILED:
        return (f"task '{task.task_id}' FAILED: {task.reason}; {what}. To run it again, "
                "restart every party with recover=True")
    return (f"task '{task.task_id}' already FINISHED; {what}. Use a new task id, or restart "
            "every party with recover=True")
