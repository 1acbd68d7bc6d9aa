"""`make privacy-eval`: what a collaborator of the MNIST-halves demo can learn about the
host's labels from the gradients it receives, round by round, in plain and secure mode, on
the demo's ten digits and on the binary task digit >= 5 (examples.mnist_halves.composed
trains the demo's models and records exactly what the collaborator receives).

Per round: cosine-clustering label accuracy over the round's gradients (and the same clusters
against shuffled labels: chance), within one batch, the direction attack's AUC with one known
positive per batch, the norm attack's AUC; at the end, model completion from k known labels
on the collaborator's trained feature model against an untrained one, and the attack on each
sample's gradient direction averaged over all rounds (the collaborator knows the ids).
`--defence JSON` evaluates a label defence instead (docs/privacy.md)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from examples.mnist_halves import data
from examples.mnist_halves.composed import Composed
from party_node.privacy import attacks, parse_defence
from party_node.privacy.scoring import matched_accuracy


def round_scores(grads: list[torch.Tensor], labels: list[torch.Tensor], g: torch.Generator):
    all_g, all_y = torch.cat(grads), torch.cat(labels)
    if int(all_y.max()) > 1:
        clusters = attacks.cosine_kmeans(all_g, 10, g)
        shuffled = all_y[torch.randperm(len(all_y), generator=g)]
        pairs = list(zip(grads, labels, strict=True))[:20]
        batch = [attacks.cluster_accuracy(gb, yb, 10, g) for gb, yb in pairs]
        return {
            "cluster_acc": matched_accuracy(clusters, all_y),
            "chance": matched_accuracy(clusters, shuffled),
            "batch_cluster_acc": sum(batch) / len(batch),
        }
    return {
        "direction_auc": attacks.direction_auc(list(zip(grads, labels, strict=True)), g),
        "norm_auc": attacks.norm_auc(all_g, all_y),
    }


def completion(model: Composed, known: int, g: torch.Generator) -> float:
    train_x, train_y = model.collaborator_features(test=False)
    test_x, test_y = model.collaborator_features(test=True)
    return attacks.completion_accuracy(train_x, train_y, test_x, test_y, known, g)


def evaluate(task: str, mode: str, rounds: int, seed: int, defence: object, known: int) -> dict:
    setting = parse_defence(defence)
    noise = torch.Generator().manual_seed(seed + 1000)
    model = Composed(task=task, mode=mode, seed=seed)
    g = torch.Generator().manual_seed(seed)
    untrained = completion(model, known, g)
    history, averager = [], attacks.RoundAverager()
    for r in range(1, rounds + 1):
        rec = model.train_round(r, setting, noise)
        for ids, grads, labels in zip(rec.ids, rec.grads, rec.labels, strict=True):
            averager.add(ids, grads, labels)
        scores = round_scores(rec.grads, rec.labels, g)
        history.append({"round": r, **{k: round(v, 3) for k, v in scores.items()}})
        print(f"  {task:6} {mode:6} round {r}: {_fmt(scores)}", file=sys.stderr, flush=True)
    rows, labels = averager.averaged()
    batches = list(zip(rows.split(model.batch_size), labels.split(model.batch_size), strict=True))
    averaged = round_scores([b[0] for b in batches], [b[1] for b in batches], g)
    return {
        "task": task,
        "mode": mode,
        "defence": setting.agreement(),
        "rounds": history,
        "averaged_over_rounds": {k: round(v, 3) for k, v in averaged.items()},
        "test_accuracy": round(model.test_accuracy(), 4),
        f"completion_acc_{known}_known": round(completion(model, known, g), 3),
        f"completion_acc_{known}_known_untrained": round(untrained, 3),
    }


def _fmt(scores: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--known", type=int, default=100, help="labels known for completion")
    parser.add_argument("--modes", default="plain,secure")
    parser.add_argument("--tasks", default="digits,ge5")
    parser.add_argument("--defence", default="null", help="label_defence as JSON")
    args = parser.parse_args()
    try:
        data.mnist(data.data_root(), True)
    except data.MnistMissing as exc:
        print(f"privacy-eval: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    defence = json.loads(args.defence)
    for task in args.tasks.split(","):
        for mode in args.modes.split(","):
            result = evaluate(task, mode, args.rounds, args.seed, defence, args.known)
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
