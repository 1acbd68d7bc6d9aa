"""Label leak and the price of each defence, on the MNIST-halves demo (ten digits) and on the
binary task digit >= 5 built from it. Every run trains the demo's models for --rounds rounds
with the same seed (examples.mnist_halves.composed: the computation plain federated training
performs, with the defence applied where the host's gradient leaves and the attacks run on
exactly what the collaborator receives), side by side in one process:

- undefended: cosine-clustering label accuracy in round 1 (ten digits), direction-attack AUC
  with one known positive per batch (digit >= 5);
- each defence and strength: the worst round's attack score over the run, the attack run on
  each sample's gradient direction averaged over all rounds (the collaborator knows the ids),
  final test accuracy, and its cost in points against the undefended run;
- the default defence (DEFAULTS) on both tasks: the figures the issue's targets are about;
- the live leak metric's cost: a real `make demo` (coordinator + 2 node processes over gRPC)
  for --demo-rounds rounds, the host's scoring seconds against its round seconds.

Last stdout line: {"bench": "label_leak", "multiclass_attack_acc_undefended": ...,
"multiclass_attack_acc_defended": ..., "binary_auc_undefended": ..., "binary_auc_defended": ...,
"accuracy_cost_points": ..., "multiclass_attack_acc_averaged": ..., "binary_auc_averaged": ...,
"sweep": [...], ...}

    python -m bench.label_leak [--rounds 20] [--seed 1] [--no-sweep] [--demo-rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from examples.mnist_halves import data
from examples.mnist_halves.composed import Composed
from party_node.privacy import attacks, parse_defence

#: The default defence, chosen from this bench (docs/privacy.md): noise confined to the span
#: of the class-mean gradients, one σ for every task; `classes` is the task's number of labels.
DEFAULT_NOISE_MULTIPLIER = 3.0
DEFAULTS = {
    t: {"kind": "class_noise", "noise_multiplier": DEFAULT_NOISE_MULTIPLIER, "classes": k}
    for t, k in (("digits", 10), ("ge5", 2))
}
SWEEP = {
    "digits": [
        {"kind": "noise", "noise_multiplier": 1.0, "clip_quantile": 0.5},
        {"kind": "gradient_rr", "epsilon": 0.9, "classes": 10, "debias": 1.0},
        {"kind": "class_noise", "noise_multiplier": 6.0, "classes": 10},
        {"kind": "label_rr", "epsilon": 1.0, "classes": 10},
    ],
    "ge5": [
        {"kind": "marvell", "power": 1.0},
        {"kind": "marvell", "power": 4.0},
        {"kind": "gradient_rr", "epsilon": 0.9, "classes": 2, "debias": 1.0},
        {"kind": "class_noise", "noise_multiplier": 10.0, "classes": 2},
        {"kind": "label_rr", "epsilon": 0.5, "classes": 2},
    ],
}


def attack_score(task: str, grads: list[torch.Tensor], labels: list[torch.Tensor], seed: int):
    g = torch.Generator().manual_seed(seed)
    if task == "digits":
        return attacks.cluster_accuracy(torch.cat(grads), torch.cat(labels), 10, g)
    return attacks.direction_auc(list(zip(grads, labels, strict=True)), g)


def averaged_score(task: str, averager: attacks.RoundAverager, seed: int, batch: int) -> float:
    """The attack on each sample's direction averaged over the rounds (batches of `batch`
    rows in id order for the direction attack's one known positive per batch)."""
    rows, labels = averager.averaged()
    return attack_score(task, list(rows.split(batch)), list(labels.split(batch)), seed)


def run(task: str, defence: object, rounds: int, seed: int) -> dict:
    torch.set_num_threads(1)  # two runs share the machine's two cores
    setting = parse_defence(defence)
    noise = torch.Generator().manual_seed(seed + 1000)
    model = Composed(task=task, seed=seed)
    averager = attacks.RoundAverager()
    scores, spent, started = [], 0.0, time.perf_counter()
    for r in range(1, rounds + 1):
        rec = model.train_round(r, setting, noise)
        spent += rec.seconds_outgoing
        scores.append(round(attack_score(task, rec.grads, rec.labels, seed + r), 4))
        for ids, grads, labels in zip(rec.ids, rec.grads, rec.labels, strict=True):
            averager.add(ids, grads, labels)
    result = {
        "task": task,
        "defence": setting.agreement(),
        "attack_round1": scores[0],
        "attack_worst": max(scores),
        "attack_averaged": round(averaged_score(task, averager, seed, model.batch_size), 4),
        "accuracy": round(model.test_accuracy(), 4),
        "defence_s_per_round": round(spent / rounds, 4),
        "run_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def live_metric_cost(rounds: int, seed: int, root: str) -> dict:
    """The real demo over gRPC: the host's leak-scoring seconds against its round seconds."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "examples.mnist_halves.demo", "--rounds", str(rounds)]
        cmd += ["--data-root", root, "--out", out, "--seed", str(seed)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = json.loads((Path(out) / "demo-host" / "mnist-halves" / "report.json").read_text())
    leak = report["label_leak"]
    scoring, rounds_s = sum(e["seconds"] for e in leak), sum(report["round_seconds"])
    return {
        "live_metric_share_of_round": round(scoring / rounds_s, 4),
        "live_metric_s_per_round": round(scoring / len(leak), 4),
        "demo_round_s": round(rounds_s / len(leak), 3),
        "live_cluster_acc_round1": leak[0]["cluster_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-sweep", action="store_true", help="only undefended and defaults")
    parser.add_argument("--demo-rounds", type=int, default=3, help="0: skip the gRPC demo")
    args = parser.parse_args()
    root = data.data_root()
    try:
        data.mnist(root, True)
    except data.MnistMissing as exc:
        raise SystemExit(f"label_leak: {exc}") from None
    jobs = [(t, None) for t in DEFAULTS] + list(DEFAULTS.items())
    if not args.no_sweep:
        jobs += [(t, d) for t, ds in SWEEP.items() for d in ds]
    # Runs are independent (each seeds its own model and noise): two at a time, in order.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run, t, d, args.rounds, args.seed) for t, d in jobs]
        results = [f.result() for f in futures]
    line = summarise(results, args.rounds, args.seed)
    if args.demo_rounds:
        try:
            line.update(live_metric_cost(args.demo_rounds, args.seed, root))
        except subprocess.CalledProcessError as exc:  # the sweep's figures still count
            line["live_metric_error"] = f"the gRPC demo exited with {exc.returncode}"
    print(json.dumps(line))


def summarise(results: list[dict], rounds: int, seed: int) -> dict:
    """The JSON line from the runs in job order: undefended, defaults, then the sweep."""
    tasks = list(DEFAULTS)
    base = {t: results[i] for i, t in enumerate(tasks)}
    default = {t: results[len(tasks) + i] for i, t in enumerate(tasks)}
    sweep = results[2 * len(tasks) :]
    for r in [*default.values(), *sweep]:
        r["cost_points"] = round(100 * (base[r["task"]]["accuracy"] - r["accuracy"]), 2)
    return {
        "bench": "label_leak",
        "rounds": rounds,
        "seed": seed,
        "multiclass_attack_acc_undefended": base["digits"]["attack_round1"],
        "multiclass_attack_acc_defended": default["digits"]["attack_worst"],
        "binary_auc_undefended": base["ge5"]["attack_round1"],
        "binary_auc_defended": default["ge5"]["attack_worst"],
        "accuracy_cost_points": max(default[t]["cost_points"] for t in default),
        "multiclass_attack_acc_averaged": default["digits"]["attack_averaged"],
        "binary_auc_averaged": default["ge5"]["attack_averaged"],
        "accuracy_undefended": {t: base[t]["accuracy"] for t in base},
        "accuracy_defended": {t: default[t]["accuracy"] for t in default},
        "default_defence": {t: default[t]["defence"] for t in default},
        "defence_s_per_round": {t: default[t]["defence_s_per_round"] for t in default},
        "sweep": sweep,
    }


if __name__ == "__main__":
    main()
