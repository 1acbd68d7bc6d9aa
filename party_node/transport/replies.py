"""Answers that travel back on the call that asked for them.

In exact-mode training a collaborator sends a batch's features and can do nothing until the
host's gradient of that batch comes back. Its FeatureExchangeOne call may say so
(`reply_kind`): the host's handler then keeps the call open and, when the host's runtime sends
that gradient, hands it to the waiting call instead of opening a GradientReturn call. One RPC
per batch instead of two: no second call's dispatch, handler and thread wake-up on the
critical path (docs/performance.md).

The handler registers a slot before the features reach the runtime (so the answer can never
come first), waits a bounded time, and withdraws it; a send that finds no slot goes the usual
way, so a late answer is never lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Which message kind may wait for which answer on its own call.
REPLY_KINDS = {"train.features": "train.gradient"}
#: How often a waiting slot looks at its stop condition (caller gone, task aborted).
_POLL_S = 0.2


@dataclass
class Slot:
    """One call waiting for the answer of kind `kind` to batch (`round`, `batch`)."""

    sender: str
    kind: str
    round: int
    batch: int
    data: bytes | None = None
    filled: threading.Event = field(default_factory=threading.Event)


class Replies:
    """The calls waiting for an answer, at most one per sender."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, Slot] = {}

    def expect(self, sender: str, kind: str, round_no: int, batch: int) -> Slot | None:
        """A slot for `sender`'s call; None if one of its calls is already waiting."""
        with self._lock:
            if sender in self._slots:
                return None
            slot = Slot(sender, kind, round_no, batch)
            self._slots[sender] = slot
            return slot

    def offer(self, peer: str, kind: str, round_no: int, batch: int, data: bytes) -> bool:
        """Hand `data` to `peer`'s waiting call if it waits for exactly this answer."""
        with self._lock:
            slot = self._slots.get(peer)
            if slot is None or (slot.kind, slot.round, slot.batch) != (kind, round_no, batch):
                return False
            del self._slots[peer]
            slot.data = data
            slot.filled.set()
            return True

    def wait(self, slot: Slot, timeout: float, stop: Callable[[], bool]) -> bytes | None:
        """The answer, or None once `timeout` has passed or `stop()` says so; either way the
        slot is gone afterwards, so a later answer takes the usual way."""
        deadline = time.monotonic() + timeout
        while not slot.filled.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
            if stop() or time.monotonic() >= deadline:
                break
        with self._lock:
            if self._slots.get(slot.sender) is slot:
                del self._slots[slot.sender]
        return slot.data
