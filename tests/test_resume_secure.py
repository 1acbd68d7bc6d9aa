"""Secure mode killed inside a round and resumed: every party restarts from the same batch,
with its share of each projection and the host's mask state, and the task ends where exact
(plaintext) training from that checkpoint ends, within the tolerances of the CKKS equivalence
tests (test_secure_protocol.py: W within 1e-6, projected features within 1e-5).

The initial shares come from the OS CSPRNG (no seed fixes them), so the reference is the
plaintext continuation from the checkpoint both parties resumed from."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from party_node.hetero_nn import aligned_order
from tests import synthetic as syn
from tests.harness import run_task
from tests.secure_synthetic import PROJ, PROJECT_LR
from tests.test_secure_protocol import W_TOL, Z_TOL

ROUNDS, BATCH, MOMENTUM = 3, 64, 0.9
COMMON = ["--rounds", str(ROUNDS), "--schedule-timeout", "6", "--checkpoint-every", "1"]


def _sgd(params, state: dict, lr: float) -> torch.optim.SGD:
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    opt.load_state_dict(state)
    return opt


def plaintext_continuation(host: dict, coll: dict, rounds: int, start: tuple[int, int]) -> dict:
    """Train the composed model in plaintext from the two parties' checkpoints at `start`
    (complete rounds, batches of the next) to the end of round `rounds`."""
    nodes = ["h", "c1"]
    feats = {n: syn.feature_model(n) for n in nodes}
    feats["h"].load_state_dict(host["feature_model"])
    feats["c1"].load_state_dict(coll["feature_model"])
    infer = torch.nn.Sequential(
        torch.nn.Linear(2 * PROJ, 6), torch.nn.ReLU(), torch.nn.Linear(6, syn.CLASSES)
    )
    infer.load_state_dict(host["infer_model"])
    proj = torch.nn.Linear(syn.OUT, PROJ, bias=False)
    proj.load_state_dict(host["host_projection"])
    u, v = host["secure_layers"]["c1"], coll["secure_layer"]
    w = (u["u"] + v["v"]).clone().requires_grad_(True)  # (in, out), float64 like the shares
    optimizers = [
        _sgd(feats["h"].parameters(), host["feature_optimizer"], syn.LR),
        _sgd(feats["c1"].parameters(), coll["feature_optimizer"], syn.LR),
        _sgd(infer.parameters(), host["infer_optimizer"], syn.LR),
        _sgd(proj.parameters(), host["host_projection_optimizer"], PROJECT_LR),
    ]
    w_opt = torch.optim.SGD([w], lr=PROJECT_LR, momentum=MOMENTUM)
    w_opt.state[w]["momentum_buffer"] = (u["buf"] + v["buf"]).clone()
    x = {n: syn.columns(n) for n in nodes}
    y = syn.labels()
    train = sorted(syn.split(set(syn.all_ids()))[0])
    for round_no in range(start[0] + 1, rounds + 1):
        batches = syn.batches(aligned_order(train, round_no), BATCH)
        skip = start[1] if round_no == start[0] + 1 else 0
        for rows in batches[skip:]:
            z_h = proj(feats["h"](x["h"][rows]))
            z_c = (feats["c1"](x["c1"][rows]).double() @ w).float()
            loss = F.cross_entropy(infer(torch.cat([z_h, z_c], dim=1)), y[rows])
            for opt in [*optimizers, w_opt]:
                opt.zero_grad()
            loss.backward()
            for opt in [*optimizers, w_opt]:
                opt.step()
    return {
        "h": feats["h"].state_dict(),
        "c1": feats["c1"].state_dict(),
        "infer": infer.state_dict(),
        "projection": proj.state_dict(),
        "w": w.detach(),
    }


def test_secure_collaborator_killed_mid_round_resumes_exactly(tmp_path):
    nodes = ["h", "c1"]
    run = dict(common=COMMON, timeout=300, module="tests.secure_synthetic")
    first = run_task(tmp_path, nodes, "s", per_node={"c1": ["--faults", "die=2"]}, **run)
    assert first["c1"].code == 17, first["c1"].stderr
    start = (1, 2)  # die=2: the collaborator stops before batch 2 of round 2
    name = "round_2_batch_2.pt"
    host_ckpt = torch.load(tmp_path / "h" / "s" / "checkpoints" / name, weights_only=True)
    coll_ckpt = torch.load(tmp_path / "c1" / "s" / "checkpoints" / name, weights_only=True)

    second = run_task(tmp_path, nodes, "s", common=[*COMMON, "--recover"], timeout=300,
                      module="tests.secure_synthetic")
    for node, r in second.items():
        assert r.code == 0, f"{node} did not finish after recover:\n{r.stderr}"
        report = json.loads((tmp_path / node / "s" / "report.json").read_text())
        assert (report["resumed_from_round"], report["resumed_from_batch"]) == start, report

    expected = plaintext_continuation(host_ckpt, coll_ckpt, ROUNDS, start)
    out = {n: tmp_path / n / "s" for n in nodes}
    u = torch.load(out["h"] / "projection_shares.pt", weights_only=True)["c1"]
    v = torch.load(out["c1"] / "projection_share.pt", weights_only=True)["v"]
    w_err = float((u + v - expected["w"]).abs().max())
    assert w_err <= W_TOL, f"W = U + V is {w_err} from exact training"
    got = {
        "h": torch.load(out["h"] / "feature_model.pt", weights_only=True),
        "c1": torch.load(out["c1"] / "feature_model.pt", weights_only=True),
        "infer": torch.load(out["h"] / "infer_model.pt", weights_only=True),
        "projection": torch.load(out["h"] / "host_projection.pt", weights_only=True),
    }
    for part, state in got.items():
        for key, tensor in state.items():
            err = float((tensor - expected[part][key]).abs().max())
            assert err <= Z_TOL, f"{part}.{key} is {err} from exact training"
    moved = float((u + v - (host_ckpt["secure_layers"]["c1"]["u"] + coll_ckpt["secure_layer"]["v"])
                   ).abs().max())
    assert moved > 10 * W_TOL, "W did not train after the resume"
