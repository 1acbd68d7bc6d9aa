"""Messages received from peers, one FIFO per sender in the sender's order, bounded in bytes
per sender; waits end on the task's abort signal or a timeout that names the silent peer.

A sender numbers its messages to this node (`Header.seq`, from 1) and may have several in
flight at once (pipelined training), so they can arrive out of order; each is held until the
ones before it are here. How far ahead a sender may run is bounded, and a number seen twice
is refused, so a peer can neither grow the hold nor replay a message.

A sender whose queued and held messages reach `max_bytes_per_sender` waits in `put` (its gRPC
call stays open: backpressure) until the runtime takes one, its call's deadline nears or it
goes away; then the call is refused with RESOURCE_EXHAUSTED. An empty queue always takes one
message, and so does the message the queue is waiting for next (it releases the held ones)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from party_node.errors import BadMessage, TaskFailed, TooLarge
from party_node.runtime.links import AbortSignal, Message
from wire import limits

#: How many messages a sender may be ahead of the next one this node expects from it (its
#: send window is at most 2 x the pipeline depth, training_mode.MAX_DEPTH = 32).
MAX_AHEAD = 128
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
        self._next: dict[str, int] = defaultdict(lambda: 1)
        self._held: dict[str, dict[int, tuple[Message, int]]] = defaultdict(dict)

    def queued_bytes(self, sender: str) -> int:
        """Bytes of `sender`'s messages queued or held, not yet taken by the runtime."""
        with self._cond:
            return self._bytes[sender]

    def put(
        self,
        sender: str,
        message: Message,
        seq: int = 0,
        size: int = 0,
        wait_s: float = 0.0,
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        """Queue `message` (`size` bytes on the wire) after every earlier one of `sender`'s
        (by `seq`; 0: now); wait up to `wait_s` for room."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._check_seq(sender, message, seq)
            while self._full(sender, size, seq):
                left = deadline - time.monotonic()
                if left <= 0 or gone() or self._abort.is_set():
                    raise TooLarge(
                        f"'{sender}' has {self._bytes[sender]} bytes queued at this node, which "
                        "has not taken them yet (node setting max_queued_bytes_per_sender = "
                        f"{self.max_bytes_per_sender}); retry once it has caught up"
                    )
                self._cond.wait(min(left, _POLL_S))
                self._check_seq(sender, message, seq)  # another call may have brought it
            self._bytes[sender] += size
            if seq == 0:
                self._queues[sender].append((message, size))
            else:
                held = self._held[sender]
                held[seq] = (message, size)
                expected = self._next[sender]
                while expected in held:
                    self._queues[sender].append(held.pop(expected))
                    expected += 1
                self._next[sender] = expected
            self._cond.notify_all()

    def _check_seq(self, sender: str, message: Message, seq: int) -> None:
        if seq == 0:
            return
        expected = self._next[sender]
        if seq < expected or seq in self._held[sender]:
            raise BadMessage(
                f"'{sender}' sent message number {seq} ({message.kind}) twice; a message is "
                "delivered once"
            )
        if seq >= expected + MAX_AHEAD:
            raise BadMessage(
                f"'{sender}' sent message number {seq} ({message.kind}) while {expected} is "
                f"still missing; at most {MAX_AHEAD} messages may be in flight"
            )

    def _full(self, sender: str, size: int, seq: int) -> bool:
        if not (self._queues[sender] or self._held[sender]):
            return False
        if seq and seq == self._next[sender]:
            return False  # the message the held ones wait for
        return self._bytes[sender] + size > self.max_bytes_per_sender

    def get(
        self, sender: str, timeout: float, describe: str, check: Callable[[], None] | None = None
    ) -> Message:
        """`sender`'s next message. `check` runs while waiting (the peer link raises there when
        one of this node's own messages could not be delivered)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._abort.is_set():
                    raise TaskFailed(self._abort.reason)
                if check is not None:
                    check()
                queue = self._queues[sender]
                if queue:
                    message, size = queue.popleft()
                    self._bytes[sender] -= size
                    self._cond.notify_all()
                    return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TaskFailed(silent(describe, timeout))
                self._cond.wait(min(left, _POLL_S))

    def take(self, sender: str) -> Message | None:
        """`sender`'s next message if it is here, without waiting."""
        with self._cond:
            queue = self._queues[sender]
            if not queue:
                return None
            message, size = queue.popleft()
            self._bytes[sender] -= size
            self._cond.notify_all()
            return message


def silent(describe: str, timeout: float) -> str:
    """Why a wait for `describe`'s next message ended, and what to do."""
    return (
        f"{describe} sent nothing for {timeout:g} s (calculation_timeout); it may be stuck or "
        "too slow — check its logs, or raise calculation_timeout"
    )
