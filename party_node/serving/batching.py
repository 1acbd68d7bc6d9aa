"""Dynamic batching: concurrent Predict calls share one pass through the parties.

A worker takes the oldest waiting call and, while another batch is running (so more calls
are on their way), keeps collecting until the batch holds `max_batch` ids or `max_wait_s`
has passed since that call arrived; with every worker idle it starts at once, since waiting
would only add latency. It runs the batch once for the distinct ids of all its calls. Every
call keeps its own deadline: one already past it is failed before any work, and the batch
runs until the latest deadline among its calls (each caller stops waiting at its own). The
queue is bounded in ids; past it, calls are refused at once instead of waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from party_node.errors import DeadlineExpired, Overloaded


@dataclass
class Pending:
    ids: Sequence[str]
    deadline: float
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """`run(ids, deadline)` is called by `workers` threads with the distinct ids of a batch
    (first-seen order) and the batch's deadline (time.monotonic()); every call of the batch
    gets its result. `observe(size)` is told each batch's id count."""

    def __init__(
        self,
        run: Callable[[list[str], float], Any],
        max_batch: int,
        max_wait_s: float,
        workers: int = 2,
        max_queued_ids: int = 65_536,
        observe: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.run, self.observe = run, observe
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.max_queued_ids = max_queued_ids
        self._queue: deque[Pending] = deque()
        self._queued_ids = 0
        self._running = 0  # batches being run now
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, ids: Sequence[str], deadline: float) -> Future:
        pending = Pending(ids, deadline)
        with self._cond:
            if self._stopped:
                raise Overloaded("this serving node is shutting down")
            if self._queued_ids + len(ids) > self.max_queued_ids:
                raise Overloaded(
                    f"{self._queued_ids} ids are already waiting here (limit "
                    f"max_queued_ids={self.max_queued_ids}); retry later"
                )
            self._queue.append(pending)
            self._queued_ids += len(ids)
            self._cond.notify()
        return pending.future

    def _take(self) -> list[Pending] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            close_at = self._queue[0].arrived + self.max_wait_s
            while self._running and not self._stopped and self._queued_ids < self.max_batch:
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft()]
            size = len(batch[0].ids)
            while self._queue and size + len(self._queue[0].ids) <= self.max_batch:
                batch.append(self._queue.popleft())
                size += len(batch[-1].ids)
            self._queued_ids -= size
            self._running += 1
            if self._queue:
                self._cond.notify()  # another worker may start on the rest now
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    self._running -= 1

    def _run_batch(self, batch: list[Pending]) -> None:
        now = time.monotonic()
        live = []
        for p in batch:
            if p.deadline <= now:
                p.future.set_exception(
                    DeadlineExpired("the call's deadline passed while it waited in the queue")
                )
            elif p.future.set_running_or_notify_cancel():
                live.append(p)
        if not live:
            return
        ids = list(dict.fromkeys(i for p in live for i in p.ids))
        self.observe(len(ids))
        try:
            result = self.run(ids, max(p.deadline for p in live))
        except Exception as exc:  # every caller hears it; the worker lives on
            for p in live:
                p.future.set_exception(exc)
            return
        for p in live:
            p.future.set_result(result)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for p in pending:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(Overloaded("this serving node is shutting down"))
        for thread in self._threads:
            thread.join(timeout=5)
