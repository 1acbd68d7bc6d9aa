"""Plain federated vs centralized epoch on the MNIST demo model (batch 128), side by side
in one run: `make demo`'s deployment (coordinator + two `heteronn node` processes over
gRPC) for 3 rounds, and the composed model trained in one process for 3 epochs, once with
torch's default thread count (all cores) and once with one thread; the fastest epoch of each
side is compared (the machine is shared: the minimum is the least noisy; and the centralized
baseline is the faster of its two settings — on a loaded machine OpenMP's threads can be
descheduled at every barrier, which made a 2-thread epoch take 100x its idle time).

Last stdout line: {"bench": "plain_vs_centralized", "federated_epoch_s": f,
"centralized_epoch_s": c, "ratio": f/c, "centralized_by_threads": {threads: seconds},
"leak_metric_s": the host's label-leak metric inside the fastest federated round}"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import optim

from examples.mnist_halves import data
from examples.mnist_halves.model import HalfConvNet, InferModule
from party_node.hetero_nn import aligned_order

EPOCHS = 3


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


def main() -> None:
    root = os.environ.get("DATA_ROOT", "./data")
    try:
        data.mnist(root, True)  # load (and, online, download) once before timing
    except data.MnistMissing as exc:
        raise SystemExit(f"plain_vs_centralized: {exc}") from None
    fed, leak = federated_epoch_s(root)
    by_threads = {n: centralized_epoch_s(root, n) for n in sorted({1, torch.get_num_threads()})}
    cen = min(by_threads.values())
    print(f"federated epoch {fed:.3f} s, centralized epoch {cen:.3f} s", file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "plain_vs_centralized",
                "federated_epoch_s": round(fed, 3),
                "centralized_epoch_s": round(cen, 3),
                "ratio": round(fed / cen, 3),
                "centralized_by_threads": {n: round(t, 3) for n, t in by_threads.items()},
                "leak_metric_s": round(leak, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
