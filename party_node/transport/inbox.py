"""Messages received from peers, one FIFO per sender, bounded in bytes per sender.

A sender whose queued messages reach `max_bytes_per_sender` waits in `put` (its gRPC call
stays open: backpressure) until the runtime takes one, its call's deadline passes or it goes
away; then the call is refused with RESOURCE_EXHAUSTED. A message is always admitted into an
empty queue, so one message up to the payload limit still fits. Waits end on the task's abort
signal, and `get` names the silent peer when its timeout passes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from party_node.errors import TaskFailed, TooLarge
from party_node.runtime.links import AbortSignal, Message
from wire import limits

#: How often blocked waits look at the abort signal and the caller.
_POLL_S = 0.2


class Inbox:
    def __init__(
        self, abort: AbortSignal, max_bytes_per_sender: int = limits.MAX_QUEUED_BYTES_PER_SENDER
    ):
        self._abort = abort
        self.max_bytes_per_sender = max_bytes_per_sender
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[Message, int]]] = defaultdict(deque)
        self._bytes: dict[str, int] = defaultdict(int)

    def queued_bytes(self, sender: str) -> int:
        with self._cond:
            return self._bytes[sender]

    def put(
        self,
        sender: str,
        message: Message,
        size: int = 0,
        wait_s: float = 0.0,
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        """Queue `message` (`size` bytes on the wire); wait up to `wait_s` for room."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._queues[sender] and self._bytes[sender] + size > self.max_bytes_per_sender:
                left = deadline - time.monotonic()
                if left <= 0 or gone() or self._abort.is_set():
                    raise TooLarge(
                        f"'{sender}' has {self._bytes[sender]} bytes queued at this node, which "
                        "has not taken them yet (node setting max_queued_bytes_per_sender = "
                        f"{self.max_bytes_per_sender}); retry once it has caught up"
                    )
                self._cond.wait(min(left, _POLL_S))
            self._queues[sender].append((message, size))
            self._bytes[sender] += size
            self._cond.notify_all()

    def get(self, sender: str, timeout: float, describe: str) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._abort.is_set():
                    raise TaskFailed(self._abort.reason)
                queue = self._queues[sender]
                if queue:
                    message, size = queue.popleft()
                    self._bytes[sender] -= size
                    self._cond.notify_all()
                    return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TaskFailed(
                        f"{describe} sent nothing for {timeout:g} s (calculation_timeout); it may "
                        "be stuck or too slow — check its logs, or raise calculation_timeout"
                    )
                self._cond.wait(min(left, _POLL_S))
