"""Every failure ends the task at every party, fast, with a message naming the party, the
phase and the fix, and a non-zero exit. Parties are separate processes over real gRPC."""

from __future__ import annotations

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
    results = wait_all({"h": spawn(tmp_path, "h", ["h", "c1"], "t", *FAST)})
    assert_all_failed(results, "'c1' did not join", "within 4 s", "schedule_timeout")


def test_peer_process_dies(tmp_path):
    # calculation_timeout is long: the death must be noticed through liveness
    # (~schedule_timeout = 4 s), not by waiting out the data timeout.
    slow_calc = ["--schedule-timeout", "4", "--calculation-timeout", "600"]
    results = run_task(
        tmp_path, ["h", "c1"], "t", common=slow_calc, per_node={"c1": ["--faults", "die=2"]}
    )
    assert results["c1"].code == 17
    host = results["h"]
    last = host.stderr.splitlines()[-1]
    assert host.code == 1
    assert "c1" in last and "TRAIN" in last and "recover=True" in last, last
    reaction = host.exited_at - results["c1"].exited_at
    assert reaction < 60, f"the host noticed the death after {reaction:.0f} s"


def test_local_work_over_calculation_timeout(tmp_path):
    # The host's own watchdog (20 s) fires before the collaborator's wait for it (120 s).
    results = run_task(
        tmp_path,
        ["h", "c1"],
        "t",
        common=["--schedule-timeout", "10"],
        per_node={
            "h": ["--faults", "host_sleep=1", "--calculation-timeout", "20"],
            "c1": ["--calculation-timeout", "120"],
        },
    )
    assert_all_failed(results, "train_a_batch", "calculation_timeout=20", "'h'")


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
