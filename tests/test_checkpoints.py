"""One party's checkpoint store, the host's checkpoint rule, random states and resuming inside
a round, as units; and a real process killed while it writes checkpoints, which must never
leave a half-written one where a resume would load it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from party_node.errors import ConfigError
from party_node.runtime import rng
from party_node.runtime.batch_checkpoints import (
    MAX_TIME_SHARE,
    CheckpointPolicy,
    MarkedPeers,
    skip_batches,
)
from party_node.runtime.checkpoint import CheckpointStore, Position
from party_node.runtime.links import Message
from party_node.runtime.roles.base import Role
from tests.harness import ROOT


def test_positions_order_and_names(tmp_path):
    store = CheckpointStore(tmp_path)
    for position in (Position(1), Position(1, 4), Position(2), Position(2, 1)):
        store.save(position, {"x": torch.tensor(position.batches)})
    assert store.positions() == [Position(2), Position(2, 1)]  # the last two are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_2.pt", "round_3_batch_1.pt"]
    assert store.latest() == Position(2, 1)
    loaded = store.load(Position(2, 1))
    assert (loaded["round"], loaded["batch"], int(loaded["x"])) == (2, 1, 1)
    assert store.rounds() == [2]
    assert str(Position(2, 1)) == "round 3 batch 1" and str(Position(2)) == "the end of round 2"


def test_resume_discards_the_abandoned_run(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(Position(3), {})
    store.save(Position(3, 5), {})
    store.save_progress({"tested_round": 3})
    store.discard_after(Position(3))
    assert store.positions() == [Position(3)] and store.progress() == {"tested_round": 3}
    store.discard_after(Position())
    assert store.positions() == [] and store.progress() == {}


def test_a_missing_checkpoint_says_what_there_is(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(Position(2), {})
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for round 3 batch 4 .* the end of"):
        store.load(Position(2, 4))


def test_policy_counts_batches_and_seconds():
    now = [0.0]
    policy = CheckpointPolicy(every_batches=3, every_seconds=0, clock=lambda: now[0])
    assert [policy.due(b) for b in range(4)] == [False, False, True, True]
    policy.reset(3)
    assert [policy.due(b) for b in range(3, 7)] == [False, False, True, True]
    timed = CheckpointPolicy(every_batches=0, every_seconds=10, clock=lambda: now[0])
    assert not timed.due(100)
    now[0] = 10.0
    assert timed.due(0)
    timed.reset(1)
    assert not timed.due(1)
    assert not CheckpointPolicy(0, 0).due(10**6)  # both off


def test_time_trigger_never_spends_more_than_5_percent_writing():
    """The default (every 60 s) stays on for any model: a write of w seconds pushes the next
    time-triggered checkpoint to at least w / 5% later; the batch trigger is left exact."""
    now = [0.0]
    timed = CheckpointPolicy(every_batches=0, every_seconds=60, clock=lambda: now[0])
    timed.reset(1, write_s=6.0)  # a large state: 6 s per write
    now[0] = 60.0
    assert not timed.due(2)  # 6 s of 66 would be 9%
    now[0] = 6.0 / MAX_TIME_SHARE
    assert timed.due(2)
    timed.reset(3)  # a round's start: the last write time is kept
    now[0] += 60.0
    assert not timed.due(3)
    counted = CheckpointPolicy(every_batches=2, every_seconds=0, clock=lambda: now[0])
    counted.reset(0, write_s=6.0)
    assert counted.due(1)


def test_the_host_times_its_checkpoint_write_for_the_policy():
    role = Role(None, None, None, None, "h")  # type: ignore[arg-type]
    role.policy = CheckpointPolicy(every_batches=0, every_seconds=1)
    role.save_checkpoint = lambda round_no, batches: time.sleep(0.2)
    role.checkpoint_due = (1, 4)
    role.after_batch(1, 4)
    assert role.policy.interval_s >= 0.2 / MAX_TIME_SHARE


def test_marked_peers_flag_only_the_chosen_batch():
    sent: list[Message] = []

    class Peers:
        def send(
            self, peer: str, message: Message, wait: bool = False, reply: str = ""
        ) -> None:
            sent.append(message)

    marked = MarkedPeers(Peers(), lambda: (2, 5))  # type: ignore[arg-type]
    for batch in (4, 5):
        marked.send("c1", Message("train.gradient", 2, batch))
    marked.send("c1", Message("train.features", 2, 5, end_of_stream=True))
    marked.send("c1", Message("train.gradient", 3, 5))
    assert [m.checkpoint for m in sent] == [False, True, False, False]


def test_random_states_round_trip_through_a_checkpoint(tmp_path):
    saved = rng.capture()
    torch.save(saved, tmp_path / "rng.pt")
    drawn = (torch.rand(3).tolist(), random.random(), np.random.rand())
    rng.restore(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == drawn


class Drop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.lin(x)))


def _iterator(model: nn.Module, data: torch.Tensor):
    """A user iterator that shuffles with the global RNG at its start, like many do."""
    order = torch.randperm(len(data))
    for start in range(0, len(data), 4):
        yield start // 4, model(data[order[start : start + 4]])


def test_skipping_batches_puts_the_iterator_and_random_draws_where_they_were():
    torch.manual_seed(0)
    model, data = Drop(), torch.randn(40, 3)
    start = rng.capture()
    uninterrupted = _iterator(model, data)
    for _ in range(3):
        next(uninterrupted)
    checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    after_three = rng.capture()
    expected = next(uninterrupted)[1]

    torch.manual_seed(123)  # a resumed process starts from anything
    resumed_model = Drop()
    resumed_model.load_state_dict(checkpoint)
    rng.restore(start)
    resumed = _iterator(resumed_model, data)
    skip_batches(resumed, 3, resumed_model, "the iterator")
    assert resumed_model.training
    for key, value in resumed_model.state_dict().items():  # batch-norm statistics untouched
        assert torch.equal(value, checkpoint[key]), key
    rng.restore(after_three)
    assert torch.equal(next(resumed)[1], expected)


def test_an_iterator_shorter_than_the_checkpoint_is_a_clear_error():
    model = Drop()
    with pytest.raises(ConfigError, match=r"yielded 2 batches, but the checkpoint .* holds 5"):
        skip_batches(iter([(0, 1), (1, 2)]), 5, model, "iterate_train_feature")


WRITER = """
import sys, torch
from party_node.runtime.checkpoint import CheckpointStore, Position
store = CheckpointStore(__import__("pathlib").Path(sys.argv[1]))
big = torch.randn(4_000_000)  # 16 MB: a write takes long enough to be killed inside
print("ready", flush=True)
for b in range(1, 10_000):
    store.save(Position(1, b), {"big": big, "b": torch.tensor(b)})
"""


def test_killed_while_writing_leaves_only_whole_checkpoints(tmp_path):
    """SIGKILL a real process at random instants while it writes checkpoints: whatever it
    left, the newest checkpoint loads, and the temp file of the interrupted write is
    removed when the store opens again."""
    gen = random.Random(13)
    folder = tmp_path / "checkpoints"
    for _ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(gen.uniform(0.2, 1.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        store = CheckpointStore(folder)
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
        latest = store.latest()
        if latest != Position():
            state = store.load(latest)
            assert int(state["b"]) == latest.batches and state["big"].numel() == 4_000_000
