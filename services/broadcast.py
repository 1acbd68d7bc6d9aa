"""Fan-out of phase commands to every watcher of a task, without a thread per watcher.

The hub keeps only the latest command of each task with a sequence number. Watchers are
coroutines on the server's event loop: each remembers the last number it sent and awaits an
asyncio.Event that `publish` (called from any thread) sets, so a reconnecting watcher always
gets the current command first (replay), nobody busy-loops, and hundreds of open streams cost
no threads. `WatchSlots` bounds how many streams are open per (task, watcher) and in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter

from services.domain import Command
from services.errors import OverLimit

Entry = tuple[int, Command]
_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class CommandHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Entry] = {}
        self._waiters: dict[str, set[_Waiter]] = {}
        self._seq = 0
        self._closed = False

    def publish(self, command: Command) -> None:
        with self._lock:
            self._seq += 1
            self._latest[command.task_id] = (self._seq, command)
            waiters = list(self._waiters.get(command.task_id, ()))
        _wake(waiters)

    def forget(self, task_id: str) -> None:
        """The task was deleted: drop its command; its watchers end."""
        with self._lock:
            self._latest.pop(task_id, None)
            waiters = list(self._waiters.get(task_id, ()))
        _wake(waiters)

    def current(self, task_id: str) -> Entry | None:
        with self._lock:
            return self._latest.get(task_id)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Server shutdown: every waiter returns None."""
        with self._lock:
            self._closed = True
            waiters = [w for ws in self._waiters.values() for w in ws]
        _wake(waiters)

    async def wait_newer(self, task_id: str, after_seq: int, timeout: float) -> Entry | None:
        """The task's latest command once its number exceeds `after_seq`; None when the hub
        closes, the task is forgotten, or `timeout` passes."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._closed:
                return None
            entry = self._latest.get(task_id)
            if entry is not None and entry[0] > after_seq:
                return entry
            self._waiters.setdefault(task_id, set()).add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout)
        finally:
            with self._lock:
                waiting = self._waiters.get(task_id)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[task_id]
        with self._lock:
            entry = self._latest.get(task_id)
            if self._closed or entry is None or entry[0] <= after_seq:
                return None
            return entry


def _wake(waiters: list[_Waiter]) -> None:
    for loop, event in waiters:
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(event.set)


class WatchSlots:
    """Counts open WatchTask streams; refuses one over `per_key` for its key (task, watcher)
    or over `total` in all, so no participant can tie up the coordinator with streams."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key, self.total = per_key, total
        self._open: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def acquire(self, key: tuple[str, str]) -> None:
        """Take a slot for `key` or raise OverLimit naming the limit."""
        with self._lock:
            if self._open[key] >= self.per_key:
                raise OverLimit(
                    f"WatchTask: {self.per_key} watches of task '{key[0]}' by {key[1]} are open "
                    "already (coordinator setting max_watches_per_node); close one first"
                )
            if sum(self._open.values()) >= self.total:
                raise OverLimit(
                    f"WatchTask: the coordinator serves {self.total} watches already (setting "
                    "max_watches); retry later"
                )
            self._open[key] += 1

    def release(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
