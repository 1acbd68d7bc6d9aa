"""Training modes (party_node/runtime/training_mode.py, docs/performance.md).

Pipelined training is exactly the bounded-staleness algorithm it claims to be: each
collaborator computes batch b's features with the weights after gradients 0..b-depth, the
host trains on them as they come, and each gradient is applied, at the weights its batch was
computed with, when it arrives. Real processes over real gRPC, also across an emulated WAN
where messages overtake each other, end with the weights of a one-process simulation of that
algorithm (within 1e-5), whatever the timing. Parties must agree on the mode at join."""

from __future__ import annotations

import copy
import json
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from party_node.errors import ConfigError
from party_node.hetero_nn import aligned_order
from party_node.runtime.training_mode import InFlight, TrainingMode, parse_training_mode
from party_node.settings import NodeSettings
from tests import synthetic as syn
from tests.harness import run_task
from tests.wan_nodes import run_over_wan
from wire.config_file import settings_error

ROUNDS, BATCH = 3, 32  # 192 train rows -> 6 batches a round


def stale_centralized(nodes: list[str], depth: int) -> dict[str, dict[str, torch.Tensor]]:
    """The pipelined algorithm in one process: collaborators' forwards on snapshots of their
    weights, gradients applied `depth` - 1 batches late, the pipeline drained every round."""
    host, collaborators = nodes[0], nodes[1:]
    feats = {n: syn.feature_model(n) for n in nodes}
    infer = syn.infer_model(len(nodes))
    opts = {n: syn.make_optimizer(m) for n, m in feats.items()}
    infer_opt = syn.make_optimizer(infer)
    x = {n: syn.columns(n) for n in nodes}
    y = syn.labels()
    train_ids = sorted(syn.split(set(syn.all_ids()))[0])

    def apply(node: str, item: tuple) -> None:
        snapshot, features, grad = item
        features.backward(grad)
        for live, old in zip(feats[node].parameters(), snapshot.parameters(), strict=True):
            live.grad = old.grad.clone()
        opts[node].step()
        opts[node].zero_grad()

    for round_no in range(1, ROUNDS + 1):
        flights: dict[str, deque] = {c: deque() for c in collaborators}
        for rows in syn.batches(aligned_order(train_ids, round_no), BATCH):
            snapshots = {c: copy.deepcopy(feats[c]) for c in collaborators}
            outs = {c: snapshots[c](x[c][rows]) for c in collaborators}
            leaves = {c: outs[c].detach().requires_grad_(True) for c in collaborators}
            fused = torch.cat([feats[host](x[host][rows]), *leaves.values()], dim=1)
            loss = F.cross_entropy(infer(fused), y[rows])
            infer_opt.zero_grad()
            opts[host].zero_grad()
            loss.backward()
            infer_opt.step()
            opts[host].step()
            for c in collaborators:
                flights[c].append((snapshots[c], outs[c], leaves[c].grad))
                if len(flights[c]) >= depth:
                    apply(c, flights[c].popleft())
        for c in collaborators:
            while flights[c]:
                apply(c, flights[c].popleft())
    states = {n: m.state_dict() for n, m in feats.items()}
    states["infer"] = infer.state_dict()
    return states


def final_weights(workdir, nodes: list[str], task: str) -> dict[str, dict[str, torch.Tensor]]:
    got = {n: torch.load(workdir / n / task / "feature_model.pt", weights_only=True) for n in nodes}
    got["infer"] = torch.load(workdir / nodes[0] / task / "infer_model.pt", weights_only=True)
    return got


def largest_difference(got: dict, expected: dict) -> tuple[float, str]:
    worst = (0.0, "")
    for part, state in expected.items():
        for name, tensor in state.items():
            diff = float((got[part][name] - tensor).abs().max())
            worst = max(worst, (diff, f"{part}.{name}"))
    return worst


def assert_matches(got: dict, expected: dict) -> None:
    diff, where = largest_difference(got, expected)
    assert diff < 1e-5, f"{where} differs from the simulated algorithm by {diff}"


# ---- the algorithm, end to end -----------------------------------------------------------------


def test_pipelined_training_is_the_bounded_staleness_algorithm(tmp_path):
    nodes = ["h", "c1", "c2"]
    common = ["--rounds", str(ROUNDS), "--batch-size", str(BATCH)]
    results = run_task(tmp_path, nodes, "pipe", common=[*common, "--training-mode", "pipelined:3"])
    for name, r in results.items():
        assert r.code == 0, f"{name} failed:\n{r.stderr}"
    got = final_weights(tmp_path, nodes, "pipe")
    assert_matches(got, stale_centralized(nodes, depth=3))
    # Not vacuous: staleness changes the result (exact training is depth 1).
    assert largest_difference(got, stale_centralized(nodes, depth=1))[0] > 1e-4


def test_pipelined_training_across_a_wan_ends_the_same(tmp_path):
    """20 ms each way between the parties: messages pile up in flight and arrive out of order;
    the receiver restores the order, and the result is the same algorithm's."""
    nodes = ["h", "c1"]
    run = run_over_wan(tmp_path, nodes, "wan", 0.02, ROUNDS, BATCH, training_mode="pipelined:4")
    for name, r in run.results.items():
        assert r.code == 0, f"{name} failed:\n{r.stderr}"
    assert_matches(final_weights(tmp_path, nodes, "wan"), stale_centralized(nodes, depth=4))
    # Every party-to-party message crossed a proxy: 3 rounds x 6 batches of 32 x 4 floats of
    # features to the host, as many gradients to the collaborator.
    floats = ROUNDS * 192 * syn.OUT * 4
    assert run.bytes_to["h"] > floats and run.bytes_to["c1"] > floats, run.bytes_to


def test_parties_must_agree_on_the_mode(tmp_path):
    results = run_task(
        tmp_path,
        ["h", "c1"],
        "disagree",
        per_node={"h": ["--training-mode", "pipelined:4"], "c1": ["--training-mode", "pipelined"]},
    )
    for name, r in results.items():
        assert r.code != 0, f"{name} trained although the modes differ"
    stderr = results["h"].stderr + results["c1"].stderr
    assert "disagree on 'training_mode'" in stderr, stderr
    assert "depth=4" in stderr and "depth=8" in stderr, stderr
    assert "every party must use the same training_mode" in stderr


# ---- settings ----------------------------------------------------------------------------------


def test_mode_settings_parse():
    assert parse_training_mode(None) == TrainingMode(kind="exact", depth=1)
    assert parse_training_mode("exact").send_window == 2
    assert parse_training_mode("pipelined").depth == 8
    assert parse_training_mode("pipelined:3") == TrainingMode(kind="pipelined", depth=3)
    mode = parse_training_mode({"kind": "pipelined", "depth": 5})
    assert mode.agreement() == "kind=pipelined;depth=5" and mode.send_window == 10


@pytest.mark.parametrize(
    "value, message",
    [
        ("fast", "training_mode kind 'fast' is unknown; use one of exact, pipelined"),
        (3, "training_mode must be a kind name or a dict, got int"),
        ("pipelined:x", "the depth after ':' must be a number"),
        ({"kind": "pipelined", "depth": 1}, "pipelined needs depth >= 2 (depth 1 is exact mode)"),
        ({"kind": "pipelined", "depth": 99}, "depth: Input should be less than or equal to 32"),
        ({"kind": "exact", "depth": 4}, "use kind 'pipelined' for depth 4"),
        ({"kind": "pipelined", "dpeth": 4}, "dpeth: Extra inputs are not permitted"),
    ],
)
def test_bad_mode_settings_name_the_problem_and_the_fix(value, message):
    with pytest.raises(ConfigError) as info:
        parse_training_mode(value)
    assert message in str(info.value)
    assert "docs/performance.md" in str(info.value)


def test_a_scheduler_refuses_a_bad_mode_when_it_is_set():
    scheduler = syn.SynthCollaborator("c1", 32, syn.Faults(""))
    assert scheduler.training_mode.kind == "exact"
    with pytest.raises(ConfigError, match="depth"):
        scheduler.training_mode = {"kind": "pipelined", "depth": 0}
    scheduler.training_mode = "pipelined:2"
    assert scheduler.training_mode.depth == 2


def test_a_node_setting_sets_the_mode_and_a_bad_one_is_one_line():
    base = {"node_id": "c1", "task_id": "t", "coordinator": "127.0.0.1:1", "tls_plaintext": True}
    assert NodeSettings(**base, training_mode="pipelined:4").training_mode == "pipelined:4"
    with pytest.raises(ValueError) as info:
        NodeSettings(**base, training_mode={"kind": "pipelined", "depth": 40})
    assert settings_error(info.value).startswith(
        "training_mode: training_mode is invalid: depth: Input should be less than or equal to 32"
    )


# ---- the collaborator's window -------------------------------------------------------------------


def test_in_flight_completes_the_oldest_batch_once_depth_are_out():
    flight = InFlight(3)
    done = [b for i in range(5) for b, _ in flight.push(i, torch.zeros(1))]
    assert done == [0, 1, 2] and [b for b, _ in flight.drain()] == [3, 4]
    exact = InFlight(1)
    assert [b for i in range(3) for b, _ in exact.push(i, torch.zeros(1))] == [0, 1, 2]


def test_kept_weights_give_the_gradient_of_the_batch_as_computed():
    """Two batches in flight: the second's backward runs after the first's optimizer step
    changed the weights in place, and must use the weights it was computed with."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x0, x1, g0, g1 = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3)
    flight = InFlight(2)
    with flight.keeping_weights(model):
        f0, f1 = model(x0), model(x1)
    f0.backward(g0)
    opt.step()
    opt.zero_grad()
    f1.backward(g1)
    before(x1).backward(g1)
    for got, want in zip(model.parameters(), before.parameters(), strict=True):
        assert torch.allclose(got.grad, want.grad, atol=1e-7)
    # Without kept weights autograd refuses (the step modified what the graph saved).
    with InFlight(1).keeping_weights(model):
        f0, f1 = model(x0), model(x1)
    f0.backward(g0)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        f1.backward(g1)


def test_secure_mode_runs_pipelined_one_batch_at_a_time(tmp_path):
    """Secure mode keeps batches in order (the CKKS layer holds one batch's state); a
    pipelined task there only stops waiting for each message's acknowledgement."""
    results = run_task(
        tmp_path,
        ["h", "c1"],
        "sec",
        common=["--rounds", "2", "--training-mode", "pipelined:4", "--schedule-timeout", "60"],
        timeout=240,
        module="tests.secure_synthetic",
    )
    for name, r in results.items():
        assert r.code == 0, f"{name} failed:\n{r.stderr}"
    report = json.loads((tmp_path / "h" / "sec" / "report.json").read_text())
    assert report["status"] == "finished" and report["rounds"] == 2
