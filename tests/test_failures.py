"""Every failure ends the task at every party, fast, with a message naming the party, the
phase and the fix, and a non-zero exit. Parties are separate processes over real gRPC."""

from __future__ import annotations

import time

from tests.harness import run_task, spawn, wait_all

FAST = ["--schedule-timeout", "4", "--calculation-timeout", "60"]


def assert_all_failed(results, *needles: str) -> None:
    for name, r in results.items():
        assert r.code != 0, f"{name} exited 0 though the task failed:\n{r.stderr}"
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("task failed:"), f"{name} did not say why:\n{r.stderr}"
        for needle in needles:
            assert needle in last, f"{name}: {needle!r} not in {last!r}"


def test_peer_that_never_joins(tmp_path):
    start = time.monotonic()
    results = wait_all({"h": spawn(tmp_path, "h", ["h", "c1"], "t", *FAST)})
    assert_all_failed(results, "'c1' did not join", "schedule_timeout")
    assert time.monotonic() - start < 30


def test_peer_process_dies(tmp_path):
    start = time.monotonic()
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=FAST, per_node={"c1": ["--faults", "die=2"]}
    )
    assert results["c1"].code == 17
    elapsed = time.monotonic() - start
    host = results["h"]
    assert host.code == 1
    assert "c1" in host.stderr.splitlines()[-1] and "TRAIN" in host.stderr.splitlines()[-1]
    assert "recover=True" in host.stderr.splitlines()[-1]
    assert elapsed < 40, f"the death was noticed after {elapsed:.0f} s, not ~schedule_timeout"


def test_local_work_over_calculation_timeout(tmp_path):
    start = time.monotonic()
    results = run_task(
        tmp_path,
        ["h", "c1"],
        "t",
        common=["--schedule-timeout", "10", "--calculation-timeout", "20"],
        per_node={"h": ["--faults", "host_sleep=1"]},
    )
    assert_all_failed(results, "train_a_batch", "calculation_timeout=20", "'h'")
    assert time.monotonic() - start < 90


def test_mismatched_batch_sizes(tmp_path):
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=FAST, per_node={"c1": ["--batch-size", "16"]}
    )
    assert_all_failed(
        results,
        "'c1' sent 16 rows for batch 0 of round 1",
        "host batch has 32 rows",
        "same batch_size",
    )


def test_mismatched_batch_counts(tmp_path):
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=FAST, per_node={"c1": ["--faults", "short=1"]}
    )
    assert_all_failed(results, "'c1' has only 5 batches in round 1", "same batch_size")


def test_unknown_feature_key(tmp_path):
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=FAST, per_node={"h": ["--faults", "bad_key=1"]}
    )
    assert_all_failed(results, "train_a_batch", "feature_key 'nope'", "'c1', 'h'")


def test_participant_not_in_nodes(tmp_path):
    procs = {n: spawn(tmp_path, n, ["h", "c1"], "t", *FAST) for n in ["h", "c1"]}
    procs["x"] = spawn(tmp_path, "x", ["h", "c1"], "t", "--no-initiator", *FAST)
    results = wait_all(procs)
    intruder = results.pop("x")
    assert intruder.code == 1
    assert "'x' is not a participant" in intruder.stderr, intruder.stderr
    for name, r in results.items():
        assert r.code == 0, f"{name} was disturbed by the refused intruder:\n{r.stderr}"


def test_train_a_batch_exception(tmp_path):
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=FAST, per_node={"h": ["--faults", "host_raise=2"]}
    )
    assert_all_failed(
        results, "host 'h', phase TRAIN round 2", "ValueError: injected failure in train_a_batch"
    )


def test_run_test_exception(tmp_path):
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=FAST, per_node={"h": ["--faults", "test_raise=1"]}
    )
    assert_all_failed(results, "phase TEST round 1", "run_test", "injected failure in run_test")
