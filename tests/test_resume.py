"""Crash and resume, in the seed's two-process workflow (the host's process embeds the
coordinator): a killed party comes back with recover=True and the task ends with exactly the
weights of uninterrupted training."""

from __future__ import annotations

import json

import pytest

from party_node.runtime.checkpoint import CheckpointStore, Position
from tests.harness import run_task
from tests.test_equivalence import BATCH, ROUNDS, assert_same_weights, centralized, final_weights

COMMON = ["--rounds", str(ROUNDS), "--batch-size", str(BATCH), "--schedule-timeout", "8"]


def _finished(results, workdir, nodes, task) -> list[dict]:
    for name, r in results.items():
        assert r.code == 0, f"{name} did not finish after recover:\n{r.stderr}"
    reports = [json.loads((workdir / n / task / "report.json").read_text()) for n in nodes]
    for report in reports:
        assert report["status"] == "finished", report
    return reports


def test_kill_then_recover(tmp_path):
    nodes = ["h", "c1"]
    first = run_task(tmp_path, nodes, "r", common=COMMON, per_node={"c1": ["--faults", "die=3"]})
    assert first["c1"].code == 17
    assert first["h"].code == 1 and "c1" in first["h"].stderr.splitlines()[-1]

    second = run_task(tmp_path, nodes, "r", common=[*COMMON, "--recover"])
    for report in _finished(second, tmp_path, nodes, "r"):
        assert report["resumed_from_round"] == 2
        assert report["rounds"] == ROUNDS
    got = final_weights(tmp_path, nodes, "r")
    assert_same_weights(got, centralized(nodes), 1e-5, "uninterrupted training")


def test_host_with_embedded_coordinator_killed_after_a_test(tmp_path):
    """Issue 13's report: SIGKILL the host right after round 3's test. Its process held the
    coordinator, whose SQLite state still says TRAIN round 4; restarting both parties with
    recover=True must resume that task, not refuse it as a conflict."""
    nodes, rounds = ["h", "c1"], 6
    common = ["--rounds", str(rounds), "--batch-size", str(BATCH), "--schedule-timeout", "8"]
    first = run_task(
        tmp_path, nodes, "r", common=common, per_node={"h": ["--faults", "host_kill=4"]}
    )
    assert first["h"].code == -9, first["h"].stderr
    last = first["c1"].stderr.strip().splitlines()[-1]
    assert first["c1"].code == 1 and last.startswith("task failed:"), first["c1"].stderr

    second = run_task(tmp_path, nodes, "r", common=[*common, "--recover"])
    for report in _finished(second, tmp_path, nodes, "r"):
        assert report["resumed_from_round"] == 3, report
        assert report["rounds"] == rounds
    got = final_weights(tmp_path, nodes, "r")
    assert_same_weights(got, centralized(nodes, rounds), 1e-6, "uninterrupted training")


def test_collaborator_killed_mid_round_resumes_from_the_batch(tmp_path):
    """Checkpoints every 2 batches: the collaborator dies before batch 2 of round 3, so every
    party resumes 2 batches into round 3 (not at its start) and ends exactly where
    uninterrupted training ends."""
    nodes = ["h", "c1"]
    common = [*COMMON, "--checkpoint-every", "2"]
    first = run_task(tmp_path, nodes, "m", common=common, per_node={"c1": ["--faults", "die=3"]})
    assert first["c1"].code == 17, first["c1"].stderr
    for node in nodes:
        names = sorted(p.name for p in (tmp_path / node / "m" / "checkpoints").glob("*.pt"))
        assert names == ["round_2.pt", "round_3_batch_2.pt"], (node, names)

    second = run_task(tmp_path, nodes, "m", common=[*common, "--recover"])
    for report in _finished(second, tmp_path, nodes, "m"):
        assert (report["resumed_from_round"], report["resumed_from_batch"]) == (2, 2), report
        assert report["rounds"] == ROUNDS
    got = final_weights(tmp_path, nodes, "m")
    assert_same_weights(got, centralized(nodes), 1e-6, "uninterrupted training")


def test_resume_at_the_last_batch_of_a_round(tmp_path):
    """Checkpoints every 3 of 6 batches: the last one of round 3 is checkpointed, then the
    collaborator dies before the round's end. The resumed round has no batch left to train
    and still ends with its 6 batches counted at both parties."""
    nodes = ["h", "c1"]
    common = [*COMMON, "--checkpoint-every", "3"]
    first = run_task(
        tmp_path, nodes, "e", common=common, per_node={"c1": ["--faults", "die_at_end=3"]}
    )
    assert first["c1"].code == 17, first["c1"].stderr
    second = run_task(tmp_path, nodes, "e", common=[*common, "--recover"])
    for report in _finished(second, tmp_path, nodes, "e"):
        assert (report["resumed_from_round"], report["resumed_from_batch"]) == (2, 6), report
    got = final_weights(tmp_path, nodes, "e")
    assert_same_weights(got, centralized(nodes), 1e-6, "uninterrupted training")


def test_pipelined_mode_resumes_where_every_party_completed(tmp_path):
    """Pipelined training (3 batches in flight): the collaborator checkpoints when a batch
    completes, so the position every party has is where the collaborator's gradients were
    applied; the task resumes there and finishes. (Step-for-step equality is exact mode's.)"""
    nodes = ["h", "c1"]
    common = [*COMMON, "--checkpoint-every", "2", "--training-mode", "pipelined:3"]
    first = run_task(tmp_path, nodes, "p", common=common, per_node={"c1": ["--faults", "die=3"]})
    assert first["c1"].code == 17, first["c1"].stderr
    # c1 dies before sending batch 2 of round 3: with 2 batches in flight it completed none.
    second = run_task(tmp_path, nodes, "p", common=[*common, "--recover"])
    for report in _finished(second, tmp_path, nodes, "p"):
        assert report["resumed_from_round"] == 2 and "resumed_from_batch" not in report, report
        assert report["rounds"] == ROUNDS


@pytest.mark.timeout(1200)
def test_killed_in_a_test_then_in_psi_then_in_split(tmp_path):
    """A crash in every phase that is not a batch, each during a recovering attempt: the host
    (with its embedded coordinator) in round 3's test, then the collaborator in PSI, then the
    host in SPLIT. Nothing checkpointed is lost on the way: the last attempt resumes at the end
    of round 3, runs its test again, and ends exactly where uninterrupted training ends."""
    nodes = ["h", "c1"]
    common = [*COMMON, "--checkpoint-every", "2"]
    attempts = [
        ("h", "kill_in_test=3", 1),
        ("c1", "kill_in_psi=0", 1),
        ("h", "kill_in_split=0", 1),
    ]
    for i, (victim, fault, survivor_code) in enumerate(attempts):
        extra = ["--recover"] if i else []
        run = run_task(
            tmp_path, nodes, "k", common=[*common, *extra], per_node={victim: ["--faults", fault]}
        )
        assert run[victim].code == -9, (fault, run[victim].stderr)
        other = "c1" if victim == "h" else "h"
        assert run[other].code == survivor_code, (fault, run[other].stderr)
        for node in nodes:
            latest = CheckpointStore(tmp_path / node / "k" / "checkpoints").latest()
            assert latest == Position(3), (fault, node, latest)

    last = run_task(tmp_path, nodes, "k", common=[*common, "--recover"])
    for report in _finished(last, tmp_path, nodes, "k"):
        assert report["resumed_from_round"] == 3 and "resumed_from_batch" not in report, report
        assert report["rounds"] == ROUNDS
    host = json.loads((tmp_path / "h" / "k" / "report.json").read_text())
    assert [t["round"] for t in host["test_history"]] == list(range(1, ROUNDS + 1)), host
    got = final_weights(tmp_path, nodes, "k")
    assert_same_weights(got, centralized(nodes), 1e-6, "uninterrupted training")
