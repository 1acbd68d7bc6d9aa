"""Label privacy through a real task: host and collaborator as separate processes over gRPC
(tests.privacy_task). The host scores its outgoing gradients each round (report.json,
TensorBoard, Prometheus); the agreed defence brings that score down; a defence that differs
between parties fails the join with a message naming the setting."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from statistics import mean

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.harness import free_port, spawn, wait_all

NODES = ["h", "c1"]
RR0 = json.dumps({"kind": "gradient_rr", "epsilon": 0, "classes": 3})


def run(tmp_path: Path, task: str, defences: dict[str, str], *extra: str, env_port: int = 0):
    procs = {}
    for node in NODES:
        args = ["--defence", defences[node], "--schedule-timeout", "60", *extra]
        if node == "c1":
            args += ["--pause", "0.3"] if env_port else []
        procs[node] = spawn(
            tmp_path,
            node,
            NODES,
            task,
            *args,
            module="tests.privacy_task",
            env={"HETERONN_NODE_METRICS_PORT": str(env_port)} if env_port and node == "h" else None,
        )
    return procs


def report(tmp_path: Path, task: str) -> dict:
    return json.loads((tmp_path / "h" / task / "report.json").read_text())


def scrape_leak(port: int, procs: dict, timeout: float = 60) -> str:
    """The host's /metrics once it carries a label-leak sample (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and procs["h"].poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
            if "heteronn_label_leak_score{" in text:
                return text
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the host never exported heteronn_label_leak_score")


def leak_lines(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("heteronn_label_leak_score{"):
            labels, value = line.rsplit(" ", 1)
            attack = labels.split('attack="')[1].split('"')[0]
            out[attack] = float(value)
    return out


def test_live_leak_metric_and_agreed_defence(tmp_path: Path) -> None:
    port = free_port()
    undefended = run(tmp_path, "open", {n: "null" for n in NODES}, "--rounds", "8", env_port=port)
    scraped = leak_lines(scrape_leak(port, undefended))
    results = wait_all(undefended)
    assert all(r.code == 0 for r in results.values()), results
    assert scraped["cluster_accuracy"] > scraped["cluster_chance"] + 0.15, scraped
    open_leak = report(tmp_path, "open")["label_leak"]
    assert [e["round"] for e in open_leak] == list(range(1, 9))
    assert {e["peer"] for e in open_leak} == {"c1"}
    # 3 classes, 192 rows: k-means on the gradients' directions finds the labels
    assert all(e["cluster_accuracy"] > e["cluster_chance"] + 0.15 for e in open_leak), open_leak
    assert mean(e["cluster_accuracy"] for e in open_leak) > 0.65, open_leak
    tb = EventAccumulator(str(tmp_path / "h" / "open" / "tb"))
    tb.Reload()
    steps = [e.step for e in tb.Scalars("label_leak/c1/cluster_accuracy")]
    assert steps == list(range(1, 9))

    defended = wait_all(run(tmp_path, "shut", {n: RR0 for n in NODES}, "--rounds", "8"))
    assert all(r.code == 0 for r in defended.values()), defended
    shut = report(tmp_path, "shut")
    leak = [e["cluster_accuracy"] for e in shut["label_leak"]]
    chance = [e["cluster_chance"] for e in shut["label_leak"]]
    # ε = 0: the class-mean part of every row is a uniformly random class's
    assert mean(leak) < mean(chance) + 0.1, (leak, chance)
    assert shut["final_test_accuracy"] >= 0


def test_a_defence_that_differs_between_parties_fails_the_join(tmp_path: Path) -> None:
    results = wait_all(run(tmp_path, "differ", {"h": RR0, "c1": "null"}))
    assert all(r.code == 1 for r in results.values()), results
    h, c1 = "'h' has kind=gradient_rr;epsilon=0.0;classes=3;debias=0.0", "'c1' has kind=none"
    expected = [  # in join order
        f"disagree on 'label_defence': {a}, {b}; every party must use the same label_defence"
        for a, b in ((h, c1), (c1, h))
    ]
    stderr = results["h"].stderr + results["c1"].stderr
    assert any(e in stderr for e in expected), stderr


def test_secure_mode_defends_delta_before_the_encrypted_backward(tmp_path: Path) -> None:
    """In secure mode the host perturbs δ = ∂L/∂z before the CKKS backward; the collaborator's
    ∂L/∂X = δ'·Wᵀ then carries the defended δ'."""
    scores = {}
    for task, defence in (("open", "null"), ("shut", RR0)):
        procs = {
            n: spawn(
                tmp_path,
                n,
                NODES,
                task,
                "--defence",
                defence,
                "--rounds",
                "2",
                "--schedule-timeout",
                "60",
                module="tests.secure_synthetic",
            )
            for n in NODES
        }
        results = wait_all(procs, timeout=240)
        assert all(r.code == 0 for r in results.values()), results
        leak = report(tmp_path, task)["label_leak"]
        scores[task] = mean(e["cluster_accuracy"] - e["cluster_chance"] for e in leak)
    assert scores["open"] > 0.15 and scores["shut"] < 0.1, scores
