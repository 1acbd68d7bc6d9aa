"""Messages received from peers, one FIFO per sender in the sender's order; waits end on the
task's abort signal or a timeout that names the silent peer.

A sender numbers its messages to this node (`Header.seq`, from 1) and may have several in
flight at once (pipelined training), so they can arrive out of order; each is held until the
ones before it are here. How far ahead a sender may run is bounded, and a number seen twice
is refused, so a peer can neither grow the hold nor replay a message."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from party_node.errors import BadMessage, TaskFailed
from party_node.runtime.links import AbortSignal, Message

#: How many messages a sender may be ahead of the next one this node expects from it (its
#: send window is at most 2 x the pipeline depth, training_mode.MAX_DEPTH = 32).
MAX_AHEAD = 128


class Inbox:
    def __init__(self, abort: AbortSignal):
        self._abort = abort
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue[Message]] = defaultdict(queue.Queue)
        self._next: dict[str, int] = defaultdict(lambda: 1)
        self._held: dict[str, dict[int, Message]] = defaultdict(dict)

    def _queue(self, sender: str) -> queue.Queue[Message]:
        with self._lock:
            return self._queues[sender]

    def put(self, sender: str, message: Message, seq: int = 0) -> None:
        """Queue `message`, after every earlier one of `sender`'s (by `seq`; 0: now)."""
        with self._lock:
            q = self._queues[sender]
            if seq == 0:
                q.put(message)
                return
            expected, held = self._next[sender], self._held[sender]
            if seq < expected or seq in held:
                raise BadMessage(
                    f"'{sender}' sent message number {seq} ({message.kind}) twice; a message is "
                    "delivered once"
                )
            if seq >= expected + MAX_AHEAD:
                raise BadMessage(
                    f"'{sender}' sent message number {seq} ({message.kind}) while {expected} is "
                    f"still missing; at most {MAX_AHEAD} messages may be in flight"
                )
            held[seq] = message
            while expected in held:
                q.put(held.pop(expected))
                expected += 1
            self._next[sender] = expected

    def get(
        self, sender: str, timeout: float, describe: str, check: Callable[[], None] | None = None
    ) -> Message:
        """`sender`'s next message. `check` runs while waiting (the peer link raises there when
        one of this node's own messages could not be delivered)."""
        q = self._queue(sender)
        deadline = time.monotonic() + timeout
        while True:
            if self._abort.is_set():
                raise TaskFailed(self._abort.reason)
            if check is not None:
                check()
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
