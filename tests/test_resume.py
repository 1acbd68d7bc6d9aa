"""A collaborator killed mid-training fails the task; every party restarted with
recover=True resumes from the last complete round, finishes, and ends with exactly the
weights of uninterrupted (centralized) training."""

from __future__ import annotations

import json

import torch

from tests.harness import run_task
from tests.test_equivalence import BATCH, ROUNDS, centralized

COMMON = ["--rounds", str(ROUNDS), "--batch-size", str(BATCH), "--schedule-timeout", "4"]


def test_kill_then_recover(tmp_path):
    nodes = ["h", "c1"]
    first = run_task(tmp_path, nodes, "r", common=COMMON, per_node={"c1": ["--faults", "die=3"]})
    assert first["c1"].code == 17
    assert first["h"].code == 1 and "c1" in first["h"].stderr.splitlines()[-1]

    second = run_task(tmp_path, nodes, "r", common=[*COMMON, "--recover"])
    for name, r in second.items():
        assert r.code == 0, f"{name} did not finish after recover:\n{r.stderr}"
    for node in nodes:
        report = json.loads((tmp_path / node / "r" / "report.json").read_text())
        assert report["status"] == "finished"
        assert report["resumed_from_round"] == 2
        assert report["rounds"] == ROUNDS

    expected = centralized(nodes)
    got = {n: torch.load(tmp_path / n / "r" / "feature_model.pt", weights_only=True) for n in nodes}
    got["infer"] = torch.load(tmp_path / "h" / "r" / "infer_model.pt", weights_only=True)
    for part, state in expected.items():
        for name, tensor in state.items():
            diff = float((got[part][name] - tensor).abs().max())
            assert diff < 1e-5, f"{part}.{name} differs from uninterrupted training by {diff}"
