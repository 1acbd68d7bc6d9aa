"""Joins a restarted coordinator found in its store but has not heard from since.

Such a node's process may have died with the old coordinator (the host's, in the
two-notebook workflow), so it does not count as joined until it heartbeats or joins again;
silent past its schedule_timeout, it is un-joined and the task waits for it instead of
failing. Only tasks still waiting for nodes keep such a set."""

from __future__ import annotations

from services.domain import Phase, Task


class UnconfirmedJoins:
    def __init__(self) -> None:
        self._by_task: dict[str, set[str]] = {}

    def restored(self, task: Task) -> None:
        """`task` was loaded from the store: its joined nodes are unconfirmed."""
        if task.phase == Phase.WAITING_FOR_NODES:
            self._by_task[task.task_id] = {n for n, p in task.participants.items() if p.joined}

    def confirm(self, task_id: str, node_id: str) -> bool:
        """The node was heard from; True if it had been unconfirmed."""
        waiting = self._by_task.get(task_id, set())
        if node_id not in waiting:
            return False
        waiting.discard(node_id)
        return True

    def everyone_joined(self, task: Task) -> bool:
        """Every participant joined, and in this coordinator's lifetime or heard from since."""
        waiting = self._by_task.get(task.task_id, set())
        return all(p.joined and n not in waiting for n, p in task.participants.items())

    def silent(self, task: Task, now: float, liveness_floor: float) -> list[str]:
        """The unconfirmed nodes of `task` silent for longer than their schedule_timeout (at
        least `liveness_floor`); they are forgotten here, the caller un-joins them."""
        waiting = self._by_task.get(task.task_id)
        if not waiting or task.phase != Phase.WAITING_FOR_NODES:
            self._by_task.pop(task.task_id, None)
            return []
        sched, _, _ = task.effective_timeouts()
        gone = [
            nid for nid in sorted(waiting)
            if now - task.participants[nid].last_heartbeat > max(sched, liveness_floor)
        ]
        waiting.difference_update(gone)
        return gone
