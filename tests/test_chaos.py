"""Chaos: one task, parties SIGKILLed at random (seeded) points, each time every party restarted
with recover=True. The task finishes; every restart resumes from the newest checkpoint all
parties had (nothing checkpointed is lost); the final weights equal uninterrupted training's
within 1e-6. Real processes, the seed's two-notebook workflow (the host embeds the
coordinator), checkpoints every 2 batches."""

from __future__ import annotations

import json

import pytest

from party_node.runtime.checkpoint import Position
from tests.chaos import ChaosRun, resumed_at, run_chaos
from tests.test_equivalence import BATCH, assert_same_weights, centralized, final_weights


def _args(rounds: int) -> list[str]:
    return [
        "--rounds", str(rounds),
        "--batch-size", str(BATCH),
        "--schedule-timeout", "10",
        "--checkpoint-every", "2",
        "--faults", "slow=0.1",
    ]


def check(run: ChaosRun, workdir, nodes: list[str], task: str, rounds: int) -> None:
    for kill in run.kills:
        if not kill.victims:  # the task finished before this kill: no attempt follows it
            continue
        for node in kill.victims:
            assert kill.exit_codes[node] == -9, kill
        after = kill.attempt + 1
        for node in nodes:
            at = resumed_at(run.logs / f"{after}-{node}.log")
            if after == run.attempts - 1:  # the attempt that finished resumed for sure
                assert at == (kill.expected if kill.expected != Position() else None), (node, kill)
            elif at is not None:
                assert at == kill.expected, (node, kill)
    for node in nodes:
        report = json.loads((workdir / node / task / "report.json").read_text())
        assert (report["status"], report["rounds"]) == ("finished", rounds), report
    got = final_weights(workdir, nodes, task)
    assert_same_weights(got, centralized(nodes, rounds), 1e-6, "uninterrupted training")


@pytest.mark.timeout(900)
def test_chaos_kills_then_recover(tmp_path):
    # Every kill must land inside the task on a quiet machine too: 8 rounds of batches slowed
    # to 0.1 s are ~5 s of training, and each attempt is killed within 2 s of its join.
    nodes, rounds = ["h", "c1"], 8
    run = run_chaos(tmp_path, nodes, "chaos", _args(rounds), seed=13, kills=3, window=2.0)
    assert len(run.kills) == 3, run.kills
    check(run, tmp_path, nodes, "chaos", rounds)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_three_parties_many_kills(tmp_path, seed):
    nodes, rounds = ["h", "c1", "c2"], 5
    run = run_chaos(tmp_path, nodes, "chaos", _args(rounds), seed=seed, kills=8, window=8.0)
    check(run, tmp_path, nodes, "chaos", rounds)
