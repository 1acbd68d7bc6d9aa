"""The seed tutorial's way of running, unchanged but for the imports: two processes (the
two notebooks), `mock_context` + `scheduler._run`, one working directory; and the
deployable way: a coordinator and two `heteronn node` processes (what `make demo` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(args: list[str], cwd, timeout: float = 600) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_notebooks_with_mock_context(tmp_path):
    host = run(["examples.mnist_halves.run_host", "--rounds", "1"], tmp_path)
    collaborator = run(["examples.mnist_halves.run_collaborator"], tmp_path)
    _, host_err = host.communicate(timeout=600)
    _, collab_err = collaborator.communicate(timeout=600)
    assert host.returncode == 0, host_err
    assert collaborator.returncode == 0, collab_err
    from examples.mnist_halves.run_host import COLLABORATOR_ID, HOST_ID, TASK_ID

    report = json.loads((tmp_path / HOST_ID / TASK_ID / "report.json").read_text())
    assert report["train_size"] == 10_000 and report["test_size"] == 2_000
    # One epoch of the seed's setup (lr 0.01, dropout) only starts to learn (centralized
    # training gets 0.27 after it): the loss must be below chance level's ln(10) = 2.3026.
    assert report["final_test_loss"] < 2.3, report
    assert (tmp_path / HOST_ID / TASK_ID / "infer_model.pt").is_file()
    assert (tmp_path / COLLABORATOR_ID / TASK_ID / "feature_model.pt").is_file()
    assert any((tmp_path / HOST_ID / TASK_ID / "tb").iterdir()), "tb_writer wrote nothing"
    assert not (tmp_path / COLLABORATOR_ID / TASK_ID / "infer_model.pt").exists()


def test_demo_with_heteronn_node_processes(tmp_path):
    demo = run(
        ["examples.mnist_halves.demo", "--rounds", "1", "--out", str(tmp_path / "demo")], tmp_path
    )
    out, err = demo.communicate(timeout=600)
    assert demo.returncode == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("final test accuracy: 0."), out
    report = json.loads(
        (tmp_path / "demo" / "demo-host" / "mnist-halves" / "report.json").read_text()
    )
    assert report["final_test_loss"] < 2.3, report


def test_demo_without_mnist_says_where_to_point_data_root(tmp_path):
    """Offline with an empty DATA_ROOT (the likeliest first mistake): one clear line, before
    any process starts; a closed proxy keeps the download failing even on a machine online."""
    closed = "http://127.0.0.1:9"
    env = {**ENV, "DATA_ROOT": str(tmp_path / "empty"), "http_proxy": closed, "https_proxy": closed}
    done = subprocess.run(
        [sys.executable, "-m", "examples.mnist_halves.demo", "--rounds", "1"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"demo: MNIST is not under DATA_ROOT={tmp_path / 'empty'}")
    assert "set DATA_ROOT to the folder that holds MNIST/raw" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_serve_matches_the_training_runs_accuracy(tmp_path):
    """`make demo-serve` in one round: every test id served one per call and in batches."""
    demo = run(
        ["examples.mnist_halves.serve_demo", "--rounds", "1", "--out", str(tmp_path / "serve")],
        tmp_path,
    )
    out, err = demo.communicate(timeout=1200)
    assert demo.returncode == 0, err
    lines = out.strip().splitlines()
    trained, served = lines[-2], lines[-1]
    assert trained.startswith("final test accuracy: 0.")
    assert served == trained.replace("final test", "served"), out
