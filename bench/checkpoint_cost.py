"""What checkpoints inside a round cost: the MNIST demo's plain task (batch 128, 79 batches a
round) with mid-round checkpoints off, at the default (every 60 s), every 10 batches and after
every batch, side by side in one run (two parties in one process, real gRPC on 127.0.0.1,
`simulate.run_local`); the fastest round of each is compared, as the machine is shared. On a
loaded machine that comparison is noisier than the cost itself, so the time every party spent
writing its mid-round checkpoints is also measured inside the same runs: `share_*_pct` is the
slower party's write time as a share of the training time (the critical path waits for it).
Also the time of one checkpoint write (both parties' models and optimizers, fsync included)
and the disk's throughput for a large state, from which the cost of any model and interval
follows: overhead ≈ write time / interval. `default_over_5pct_above_mb` is the state size
whose write takes 5% of the default interval at that throughput; the host also stretches its
time trigger so that its own writes stay under 5% (batch_checkpoints.MAX_TIME_SHARE).

Last stdout line: {"bench": "checkpoint_cost", "epoch_s_off": .., "epoch_s_default": ..,
"epoch_s_every_10": .., "epoch_s_every_1": .., "overhead_default_pct": ..,
"overhead_every_10_pct": .., "overhead_every_1_pct": .., "share_default_pct": ..,
"share_every_10_pct": .., "share_every_1_pct": .., "checkpoints_default": ..,
"checkpoint_ms": .., "checkpoint_mb": .., "write_mb_per_s": .., "default_est_pct": ..,
"default_over_5pct_above_mb": ..}"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from examples.mnist_halves import data
from examples.mnist_halves.collaborator import DemoHeteroCollaborator
from examples.mnist_halves.host import DemoHeteroHost
from party_node.hetero_nn.host import CHECKPOINT_EVERY_SECONDS
from party_node.runtime.checkpoint import CheckpointStore, Position
from party_node.simulate import run_local

ROUNDS = 2
REPEATS = 2
#: name -> (checkpoint_every_batches, checkpoint_every_seconds)
SETTINGS = {
    "off": (0, 0.0),
    "default": (0, CHECKPOINT_EVERY_SECONDS),
    "every_10": (10, 0.0),
    "every_1": (1, 0.0),
}


class TimedSaves:
    """Seconds each party spends in its mid-round checkpoint writes, and how many (the
    parties are threads of this process, so the store's `save` is wrapped here)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self._save = CheckpointStore.save
        timed = self

        def save(store: CheckpointStore, position: Position, state: dict) -> None:
            start = time.perf_counter()
            timed._save(store, position, state)
            if position.batches:
                party = store.directory.parts[-3]  # <workdir>/<party>/<task>/checkpoints
                timed.seconds[party] += time.perf_counter() - start
                timed.count[party] += 1

        CheckpointStore.save = save  # type: ignore[method-assign]

    def close(self) -> None:
        CheckpointStore.save = self._save  # type: ignore[method-assign]


def epoch_s(
    root: str, every_batches: int, every_seconds: float, out: Path
) -> tuple[float, float, int]:
    """(fastest round's seconds, slower party's mid-round write share in %, checkpoints)."""
    host = DemoHeteroHost("demo_host", 128, max_rounds=ROUNDS, data_root=root)
    host.checkpoint_every_batches, host.checkpoint_every_seconds = every_batches, every_seconds
    collaborator = DemoHeteroCollaborator("demo_collaborator", 128, data_root=root)
    timed = TimedSaves()
    try:
        reports = run_local(host, [collaborator], task_id="ckpt", workdir=out)
    finally:
        timed.close()
    rounds = reports["demo_host"]["round_seconds"]
    share = 100 * max(timed.seconds.values(), default=0.0) / sum(rounds)
    return min(rounds), share, max(timed.count.values(), default=0)


def checkpoint_write(out: Path) -> tuple[float, float]:
    """(ms, MB) of one party's checkpoint, as the runtime writes it (the larger party's)."""
    host = DemoHeteroHost("demo_host", 128)
    collaborator = DemoHeteroCollaborator("demo_collaborator", 128)
    states = []
    for s in (host, collaborator):
        s.feature_model = s.build_feature_model()
        s.feature_optimizer = s.build_feature_optimizer(s.feature_model)
        states.append({"f": s.feature_model.state_dict(), "o": s.feature_optimizer.state_dict()})
    host.infer_model = host.build_infer_model()
    states[0]["i"] = host.infer_model.state_dict()
    worst, size = 0.0, 0
    for name, state in zip(("h", "c"), states, strict=True):  # each party writes its own
        store = CheckpointStore(out / name)
        best = float("inf")
        for b in range(1, 6):
            start = time.perf_counter()
            store.save(Position(0, b), state)
            best = min(best, time.perf_counter() - start)
        worst = max(worst, best)
        size = max(size, (out / name / Position(0, 5).filename).stat().st_size)
    return worst * 1000, size / 2**20


def write_throughput(out: Path) -> float:
    """MB/s of a 256 MB checkpoint (a large model with its optimizer state)."""
    store = CheckpointStore(out / "large")
    state = {"w": torch.randn(64 * 2**20)}
    best = float("inf")
    for b in range(1, 3):
        start = time.perf_counter()
        store.save(Position(0, b), state)
        best = min(best, time.perf_counter() - start)
    return 256 / best


def main() -> None:
    root = os.environ.get("DATA_ROOT", "./data")
    try:
        data.mnist(root, True)
    except data.MnistMissing as exc:
        raise SystemExit(f"checkpoint_cost: {exc}") from None
    torch.set_num_threads(1)
    # PSI is not what is measured: the in-process ECDH spares two engine workers per run (and
    # the spu engine's link failed twice here at load 20: "SendThread error bad_weak_ptr").
    os.environ.setdefault("HETERONN_NODE_PSI_ENGINE", "ecdh")
    best = {name: float("inf") for name in SETTINGS}
    share = {name: float("inf") for name in SETTINGS}
    count = {name: 0 for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(REPEATS):  # interleaved, so load changes hit every setting alike
            for name, (n, t) in SETTINGS.items():
                out = Path(tmp) / f"{name}-{repeat}"
                seconds, written, checkpoints = epoch_s(root, n, t, out)
                best[name] = min(best[name], seconds)
                share[name] = min(share[name], written)
                count[name] = max(count[name], checkpoints)
        write_ms, write_mb = checkpoint_write(Path(tmp))
        throughput = write_throughput(Path(tmp))

    def overhead(name: str) -> float:
        return round(100 * (best[name] / best["off"] - 1), 1)

    result = {"bench": "checkpoint_cost"}
    result.update({f"epoch_s_{name}": round(s, 3) for name, s in best.items()})
    on = [name for name in SETTINGS if name != "off"]
    result.update({f"overhead_{name}_pct": overhead(name) for name in on})
    result.update({f"share_{name}_pct": round(share[name], 2) for name in on})
    result.update(
        checkpoints_default=count["default"],
        checkpoint_ms=round(write_ms, 1),
        checkpoint_mb=round(write_mb, 2),
        write_mb_per_s=round(throughput),
        default_est_pct=round(100 * write_ms / 1000 / CHECKPOINT_EVERY_SECONDS, 3),
        default_over_5pct_above_mb=round(0.05 * CHECKPOINT_EVERY_SECONDS * throughput),
    )
    print(
        ", ".join(f"{name} {best[name]:.2f} s ({share[name]:.1f}% writing)" for name in best)
        + f"; one checkpoint {write_ms:.0f} ms ({write_mb:.2f} MB), {throughput:.0f} MB/s",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
