"""Messages received from peers, one FIFO per sender; waits end on the task's abort signal
or a timeout that names the silent peer."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict

from party_node.errors import TaskFailed
from party_node.runtime.links import AbortSignal, Message


class Inbox:
    def __init__(self, abort: AbortSignal):
        self._abort = abort
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[Message]] = defaultdict(queue.Queue)

    def _queue(self, sender: str) -> queue.Queue[Message]:
        with self._lock:
            return self._queues[sender]

    def put(self, sender: str, message: Message) -> None:
        self._queue(sender).put(message)

    def get(self, sender: str, timeout: float, describe: str) -> Message:
        q = self._queue(sender)
        deadline = time.monotonic() + timeout
        while True:
            if self._abort.is_set():
                raise TaskFailed(self._abort.reason)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TaskFailed(
                    f"{describe} sent nothing for {timeout:g} s (calculation_timeout); it may be "
                    "stuck or too slow — check its logs, or raise calculation_timeout"
                )
            try:
                return q.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
