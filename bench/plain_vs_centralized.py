"""Plain federated vs centralized epoch on the MNIST demo model (batch 128), side by side
in one run: `make demo`'s deployment (coordinator + two `heteronn node` processes over
gRPC) for 3 rounds, and the composed model trained in one process for 3 epochs, once with
torch's default thread count (all cores) and once with one thread; the fastest epoch of each
side is compared (the machine is shared: the minimum is the least noisy; and the centralized
baseline is the faster of its two settings — on a loaded machine OpenMP's threads can be
descheduled at every barrier, which made a 2-thread epoch take 100x its idle time).

One measurement of that pair swung between 0.97 and 1.66 on the shared machine, so the bench
repeats it, centralized and federated alternately, `--reps` times (default 3, at most 9,
and no new repetition once `--budget` seconds have passed) and reports the median ratio.

Last stdout line: {"bench": "plain_vs_centralized", "ratio": median of the repetitions'
ratios, "federated_epoch_s" / "centralized_epoch_s": medians, "centralized_by_threads":
{threads: median seconds}, "leak_metric_s": median seconds the host's label-leak metric took
for the fastest federated round (scored beside training, not inside the round),
"fastest_ratio": the fastest federated epoch of all repetitions over the fastest centralized
one (under load, the two least disturbed measurements: the median ratio swings with whichever
side another process slowed), "load_average": [1, 5, 15 min] at the start, "repetitions":
[{each one's figures and the load average when it started}]}"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from torch import optim

from examples.mnist_halves import data
from examples.mnist_halves.model import HalfConvNet, InferModule
from party_node.hetero_nn import aligned_order

EPOCHS = 3
#: Upper bound on --reps (each repetition is one demo run and six centralized epochs).
MAX_REPS = 9


def centralized_epoch_s(root: str, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _centralized_epoch_s(root)
    finally:
        torch.set_num_threads(previous)


def _centralized_epoch_s(root: str) -> float:
    common = set(data.local_ids(data.HOST_IDS)) & set(data.local_ids(data.COLLABORATOR_IDS))
    train = sorted(data.split(common)[0])
    left, right, infer = HalfConvNet(), HalfConvNet(), InferModule()
    opts = [optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (left, right, infer)]
    times = []
    for epoch in range(1, EPOCHS + 1):
        start = time.perf_counter()
        order = aligned_order(train, epoch)
        halves = zip(
            data.batches(root, order, False, 128, "left"),
            data.batches(root, order, False, 128, "right"),
            strict=True,
        )
        for (xl, y), (xr, _) in halves:
            loss = F.nll_loss(infer(torch.cat([left(xl), right(xr)], dim=1)), y)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
        times.append(time.perf_counter() - start)
    return min(times)


def federated_epoch_s(root: str) -> tuple[float, float]:
    """The fastest round's seconds, and the leak metric's seconds in that round."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "examples.mnist_halves.demo",
            "--rounds",
            str(EPOCHS),
            "--data-root",
            root,
            "--out",
            out,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = json.loads((Path(out) / "demo-host" / "mnist-halves" / "report.json").read_text())
        seconds = report["round_seconds"]
        fastest = seconds.index(min(seconds))
        leak = [e["seconds"] for e in report.get("label_leak", []) if e["round"] == fastest + 1]
        return seconds[fastest], sum(leak)


def repetition(root: str) -> dict[str, Any]:
    """One side-by-side pair: the centralized epochs, then the federated rounds."""
    load = [round(x, 2) for x in os.getloadavg()]
    by_threads = {n: centralized_epoch_s(root, n) for n in sorted({1, torch.get_num_threads()})}
    fed, leak = federated_epoch_s(root)
    cen = min(by_threads.values())
    return {
        "federated_epoch_s": round(fed, 3),
        "centralized_epoch_s": round(cen, 3),
        "ratio": round(fed / cen, 3),
        "centralized_by_threads": {n: round(t, 3) for n, t in by_threads.items()},
        "leak_metric_s": round(leak, 3),
        "load_average": load,
    }


def summary(reps: list[dict[str, Any]], load: list[float]) -> dict[str, Any]:
    def mid(key: str) -> float:
        return round(median(r[key] for r in reps), 3)

    threads = reps[0]["centralized_by_threads"]
    return {
        "bench": "plain_vs_centralized",
        "federated_epoch_s": mid("federated_epoch_s"),
        "centralized_epoch_s": mid("centralized_epoch_s"),
        "ratio": mid("ratio"),
        "centralized_by_threads": {
            n: round(median(r["centralized_by_threads"][n] for r in reps), 3) for n in threads
        },
        "leak_metric_s": mid("leak_metric_s"),
        "fastest_ratio": round(
            min(r["federated_epoch_s"] for r in reps) / min(r["centralized_epoch_s"] for r in reps),
            3,
        ),
        "load_average": load,
        "repetitions": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help=f"repetitions (1..{MAX_REPS})")
    parser.add_argument(
        "--budget", type=float, default=240.0, help="start no repetition after this many s"
    )
    args = parser.parse_args()
    if not 1 <= args.reps <= MAX_REPS:
        raise SystemExit(f"plain_vs_centralized: --reps must be 1..{MAX_REPS}, got {args.reps}")
    root = os.environ.get("DATA_ROOT", "./data")
    try:
        data.mnist(root, True)  # load (and, online, download) once before timing
    except data.MnistMissing as exc:
        raise SystemExit(f"plain_vs_centralized: {exc}") from None
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    reps: list[dict[str, Any]] = []
    while len(reps) < args.reps and (not reps or time.monotonic() - started < args.budget):
        reps.append(repetition(root))
        r = reps[-1]
        print(
            f"repetition {len(reps)}: federated epoch {r['federated_epoch_s']:.3f} s, "
            f"centralized epoch {r['centralized_epoch_s']:.3f} s, ratio {r['ratio']:.3f} "
            f"(load {r['load_average'][0]})",
            file=sys.stderr,
            flush=True,
        )
    print(json.dumps(summary(reps, load)))


if __name__ == "__main__":
    main()
