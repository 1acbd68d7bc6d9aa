"""Fan-out of phase commands to every watcher of a task.

The hub keeps only the latest command of each task with a sequence number; a watcher
remembers the last number it sent and sleeps on one Condition until a newer one arrives,
so a reconnecting watcher always gets the current command first (replay) and nobody
busy-loops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.domain import Command


class CommandHub:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: dict[str, tuple[int, Command]] = {}
        self._seq = 0
        self._closed = False

    def publish(self, command: Command) -> None:
        with self._cond:
            self._seq += 1
            self._latest[command.task_id] = (self._seq, command)
            self._cond.notify_all()

    def current(self, task_id: str) -> tuple[int, Command] | None:
        with self._cond:
            return self._latest.get(task_id)

    def wake(self) -> None:
        """Make every waiter re-check its `active` predicate (e.g. a client went away)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Server shutdown: every waiter returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_newer(
        self,
        task_id: str,
        after_seq: int,
        active: Callable[[], bool],
        timeout: float | None = None,
    ) -> tuple[int, Command] | None:
        """The task's latest command once its number exceeds `after_seq`; None when the hub
        closes, `active()` turns false, or `timeout` passes."""

        def ready() -> bool:
            if self._closed or not active():
                return True
            entry = self._latest.get(task_id)
            return entry is not None and entry[0] > after_seq

        with self._cond:
            self._cond.wait_for(ready, timeout=timeout)
            if self._closed or not active():
                return None
            entry = self._latest.get(task_id)
            if entry is None or entry[0] <= after_seq:
                return None
            return entry
