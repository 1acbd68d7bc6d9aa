"""Plain federated training equals centralized training of the composed model: same
initial weights, same batch order, no dropout, 24 SGD-with-momentum steps; every part's
final weights match within 1e-5. Parties run as separate processes over real gRPC."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from party_node.hetero_nn import aligned_order
from tests import synthetic as syn
from tests.harness import run_task

ROUNDS, BATCH = 4, 32  # 192 train rows -> 6 batches a round -> 24 steps


def centralized(nodes: list[str], rounds: int = ROUNDS) -> dict[str, dict[str, torch.Tensor]]:
    feats = {n: syn.feature_model(n) for n in nodes}
    infer = syn.infer_model(len(nodes))
    optimizers = [syn.make_optimizer(m) for m in [*feats.values(), infer]]
    x = {n: syn.columns(n) for n in nodes}
    y = syn.labels()
    train, _ = syn.split(set(syn.all_ids()))
    train_ids = sorted(train)
    for round_no in range(1, rounds + 1):
        for rows in syn.batches(aligned_order(train_ids, round_no), BATCH):
            fused = torch.cat([feats[n](x[n][rows]) for n in nodes], dim=1)
            loss = F.cross_entropy(infer(fused), y[rows])
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
    states = {n: m.state_dict() for n, m in feats.items()}
    states["infer"] = infer.state_dict()
    return states


def final_weights(workdir: Path, nodes: list[str], task: str) -> dict[str, dict[str, torch.Tensor]]:
    """Every party's final feature model and the host's inference model, as saved."""
    got = {n: torch.load(workdir / n / task / "feature_model.pt", weights_only=True) for n in nodes}
    got["infer"] = torch.load(workdir / nodes[0] / task / "infer_model.pt", weights_only=True)
    return got


def assert_same_weights(got: dict, expected: dict, tol: float, against: str) -> None:
    for part, state in expected.items():
        for name, tensor in state.items():
            diff = float((got[part][name] - tensor).abs().max())
            assert diff < tol, f"{part}.{name} differs from {against} by {diff}"


@pytest.mark.parametrize("nodes", [["h", "c1"], ["h", "c1", "c2"]], ids=["2-party", "3-party"])
def test_federated_equals_centralized(tmp_path, nodes):
    results = run_task(
        tmp_path, nodes, "eq", common=["--rounds", str(ROUNDS), "--batch-size", str(BATCH)]
    )
    for name, r in results.items():
        assert r.code == 0, f"{name} failed:\n{r.stderr}"
    got = final_weights(tmp_path, nodes, "eq")
    initial = syn.feature_model(nodes[1]).state_dict()
    moved = max(float((got[nodes[1]][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-2, "the collaborator's feature model did not train"
    assert_same_weights(got, centralized(nodes), 1e-5, "centralized training")
