"""The seed tutorial's way of running, unchanged but for the imports: two processes (the
two notebooks), `mock_context` + `scheduler._run`, one working directory; and the
deployable way: a coordinator and two `heteronn node` processes (what `make demo` runs).

Both run on an MNIST-format stand-in the tests write (tests/mnist_standin.py), so they pass
on a machine without the data set; where DATA_ROOT holds the real MNIST (as in CI), the
demo runs on it instead and checks what the real data must give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.mnist_standin import has_mnist, write_mnist

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
REAL = os.environ.get("DATA_ROOT", "")


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist-standin"))


def run(args: list[str], cwd, data_root: Path | str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env={**ENV, "DATA_ROOT": str(data_root)},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_notebooks_with_mock_context(tmp_path, standin):
    host = run(["examples.mnist_halves.run_host", "--rounds", "1"], tmp_path, standin)
    collaborator = run(["examples.mnist_halves.run_collaborator"], tmp_path, standin)
    _, host_err = host.communicate(timeout=600)
    _, collab_err = collaborator.communicate(timeout=600)
    assert host.returncode == 0, host_err
    assert collaborator.returncode == 0, collab_err
    from examples.mnist_halves.run_host import COLLABORATOR_ID, HOST_ID, TASK_ID

    report = json.loads((tmp_path / HOST_ID / TASK_ID / "report.json").read_text())
    assert report["train_size"] == 10_000 and report["test_size"] == 2_000
    # The stand-in's digits are easy: one round of the seed's setup must learn them (chance
    # level is ln(10) = 2.3026).
    assert report["final_test_loss"] < 2.3, report
    assert (tmp_path / HOST_ID / TASK_ID / "infer_model.pt").is_file()
    assert (tmp_path / COLLABORATOR_ID / TASK_ID / "feature_model.pt").is_file()
    assert any((tmp_path / HOST_ID / TASK_ID / "tb").iterdir()), "tb_writer wrote nothing"
    assert not (tmp_path / COLLABORATOR_ID / TASK_ID / "infer_model.pt").exists()


def test_demo_with_heteronn_node_processes(tmp_path, standin):
    """On the real MNIST where DATA_ROOT holds it: one epoch of the seed's setup (lr 0.01,
    dropout) only starts to learn (centralized training gets 0.27 after it), so the loss must
    be below chance level's ln(10) = 2.3026. Elsewhere the same workflow on the stand-in."""
    data_root = REAL if REAL and has_mnist(REAL) else standin
    demo = run(
        ["examples.mnist_halves.demo", "--rounds", "1", "--out", str(tmp_path / "demo"),
         "--data-root", str(data_root)],
        tmp_path,
        data_root,
    )
    out, err = demo.communicate(timeout=600)
    assert demo.returncode == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("final test accuracy: 0."), out
    report = json.loads(
        (tmp_path / "demo" / "demo-host" / "mnist-halves" / "report.json").read_text()
    )
    assert report["train_size"] == 10_000 and report["test_size"] == 2_000
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
def test_demo_serve_matches_the_training_runs_accuracy(tmp_path, standin):
    """`make demo-serve` in one round: every test id served one per call and in batches."""
    data_root = REAL if REAL and has_mnist(REAL) else standin
    demo = run(
        ["examples.mnist_halves.serve_demo", "--rounds", "1", "--out", str(tmp_path / "serve")],
        tmp_path,
        data_root,
    )
    out, err = demo.communicate(timeout=1200)
    assert demo.returncode == 0, err
    lines = out.strip().splitlines()
    trained, served = lines[-2], lines[-1]
    assert trained.startswith("final test accuracy: 0.")
    assert served == trained.replace("final test", "served"), out
