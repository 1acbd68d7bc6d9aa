"""Scheduler factories for `heteronn node --scheduler tests.partition_nodes:host` (or
`:collaborator`): the synthetic task of tests/synthetic.py, where the collaborator stops
before its second batch of round 2 until the test has cut the network (a file handshake in
`signal_dir`: it writes `paused`, then waits for `partitioned`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tests.synthetic import Faults, SynthCollaborator, SynthHost

PAUSE_ROUND, PAUSE_BATCH = 2, 1


class PausingCollaborator(SynthCollaborator):
    def __init__(self, node: str, batch_size: int, signal_dir: str, **timeouts: Any) -> None:
        super().__init__(node, batch_size, Faults(""), **timeouts)
        self.signal_dir = Path(signal_dir)

    def iterate_train_feature(self, feature_model, train_ids) -> Iterator[torch.Tensor]:
        for b, features in enumerate(super().iterate_train_feature(feature_model, train_ids)):
            if (self.current_round, b) == (PAUSE_ROUND, PAUSE_BATCH):
                (self.signal_dir / "paused").touch()
                deadline = time.monotonic() + 30
                while not (self.signal_dir / "partitioned").exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError("the test never cut the network")
                    time.sleep(0.05)
            yield features


def host(nodes: list[str], batch_size: int, rounds: int, **timeouts: Any) -> SynthHost:
    return SynthHost(nodes[0], nodes, batch_size, rounds, Faults(""), **timeouts)


def collaborator(
    node: str, batch_size: int, signal_dir: str, **timeouts: Any
) -> PausingCollaborator:
    return PausingCollaborator(node, batch_size, signal_dir, **timeouts)
