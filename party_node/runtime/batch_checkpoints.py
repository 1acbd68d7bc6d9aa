"""Checkpoints inside a round, consistent across parties, and resuming from one.

The host decides, at the start of a batch, whether every party checkpoints after it (every
`checkpoint_every_batches` batches or `checkpoint_every_seconds` seconds, whichever comes
first); it sets `checkpoint` on that batch's messages to each collaborator, which checkpoints
after the same batch. So all parties hold their state for the same batch, whatever the clocks.

Resuming k batches into a round, a party restores the random states of the round's start,
pulls (and drops) the first k batches of the user's iterator without training, then restores
the random states of the checkpoint: the iterator is where the uninterrupted run had it (its
aligned order, its own shuffles), and every later random draw is the one that run made.

Pipelined training (training_mode): the collaborator checkpoints when the flagged batch
completes (its gradient applied); batches it had already sent are in flight then and are not
in the checkpoint. A resume there recomputes them with the newer weights: every party resumes
from the same batch, but the pipelined run's staleness differs at that point, so the resumed
weights match an uninterrupted pipelined run only approximately. Exact mode resumes exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from party_node.errors import ConfigError
from party_node.runtime.links import Message, PeerLink


@dataclass(frozen=True)
class Resume:
    """Where a party resumes inside a round, and the random states around the skipped part."""

    round: int
    batches: int
    round_start_rng: dict[str, Any]
    rng: dict[str, Any]


#: Most of the training time the time trigger may spend writing checkpoints: after a write of
#: w seconds the next time-triggered one waits at least w / MAX_TIME_SHARE, so a large state
#: stretches `checkpoint_every_seconds` rather than slowing training by more than 5%.
MAX_TIME_SHARE = 0.05


class CheckpointPolicy:
    """The host's rule: checkpoint after batch b when N batches or T seconds have passed since
    the last checkpoint (0 turns a trigger off). The time trigger also waits until the last
    write is at most MAX_TIME_SHARE of the time since; the batch trigger is exact."""

    def __init__(
        self,
        every_batches: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_batches = every_batches
        self.every_seconds = every_seconds
        self._clock = clock
        self._last_batch = 0
        self._last_time = clock()
        self._write_s = 0.0

    def reset(self, batches_done: int = 0, write_s: float | None = None) -> None:
        """A checkpoint now, holding `batches_done` batches of the round; `write_s`: what
        writing it took (None: not written here, the last known write time stays)."""
        self._last_batch, self._last_time = batches_done, self._clock()
        if write_s is not None:
            self._write_s = write_s

    @property
    def interval_s(self) -> float:
        """The time trigger's interval: `every_seconds`, stretched for slow writes."""
        return max(self.every_seconds, self._write_s / MAX_TIME_SHARE)

    def due(self, b: int) -> bool:
        """At the start of batch b: checkpoint once it is done?"""
        n, t = self.every_batches, self.every_seconds
        return bool(
            (n > 0 and b + 1 - self._last_batch >= n)
            or (t > 0 and self._clock() - self._last_time >= self.interval_s)
        )


class MarkedPeers:
    """The host's peer link: every message of the batch the host checkpoints after carries
    the `checkpoint` flag, so each collaborator knows before the batch ends."""

    def __init__(self, peers: PeerLink, due: Callable[[], tuple[int, int] | None]) -> None:
        self._peers = peers
        self._due = due

    def send(self, peer: str, message: Message, wait: bool = False, reply: str = "") -> None:
        if not message.end_of_stream and self._due() == (message.round, message.batch):
            message.checkpoint = True
        self._peers.send(peer, message, wait, reply)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peers, name)


def skip_batches(
    batches: Iterator[tuple[int, Any]], count: int, model: torch.nn.Module, what: str
) -> None:
    """Pull `count` batches the checkpoint already holds, without autograd and with `model`
    in eval mode; its buffers (batch-norm statistics) are put back as they were."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    training = model.training
    pulled = 0
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(count):
                if next(batches, None) is None:
                    break
                pulled += 1
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
    finally:
        model.train(training)
    if pulled < count:
        raise ConfigError(
            f"{what} yielded {pulled} batches, but the checkpoint being resumed holds {count} "
            "of this round; the data or batch_size changed since it was written — restore them, "
            "or restart every party without recover to train afresh"
        )
