"""Secure vs plain epoch time on the MNIST-halves demo (batch 128, 20 -> 10 projections).

Runs the demo's host and collaborator as two processes over real gRPC (the seed's
mock_context way) once in plain and once in secure mode, and times each training round at the
host (first batch pulled -> round finished); the fastest round after the first (warm-up) counts.
Last stdout line:
{"bench": "secure_vs_plain", "secure_epoch_s": s, "plain_epoch_s": p, "ratio": s/p,
 "bytes_per_batch": b, ...}

    python -m bench.secure_vs_plain [--rounds 3] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NODES = ["demo-host", "demo-collaborator"]


def _timed_host_class(base: type) -> type:
    class TimedHost(base):
        """Records each round's training time: first batch pulled -> is_task_finished()."""

        def iterate_train_feature(self, feature_model, train_ids):
            self._bench_start = time.perf_counter()
            yield from super().iterate_train_feature(feature_model, train_ids)

        def is_task_finished(self) -> bool:
            times = getattr(self, "_bench_times", [])
            times.append(time.perf_counter() - self._bench_start)
            self._bench_times = times
            Path("epoch_times.json").write_text(json.dumps(times))
            return super().is_task_finished()

    return TimedHost


def run_party(node: str, mode: str, rounds: int, data_root: str) -> int:
    """One party of the benchmark task (runs in its own process)."""
    from party_node import TaskFailed, mock_context

    torch.set_num_threads(1)
    common = {"data_root": data_root, "batch_size": 128}
    if node == NODES[0]:
        if mode == "secure":
            from examples.mnist_halves.host_secure import make_scheduler
        else:
            from examples.mnist_halves.host import make_scheduler
        base = make_scheduler(max_rounds=rounds, log_rounds=rounds, **common)
        base.__class__ = _timed_host_class(type(base))
        scheduler = base
    else:
        if mode == "secure":
            from examples.mnist_halves.collaborator_secure import make_scheduler
        else:
            from examples.mnist_halves.collaborator import make_scheduler
        scheduler = make_scheduler(**common)
    try:
        with mock_context(id=node, nodes=NODES):
            scheduler._run(id=node, task_id=f"bench-{mode}", is_initiator=node == NODES[0])
    except TaskFailed as exc:
        print(f"task failed: {exc.reason}", file=sys.stderr)
        return 1
    return 0


def run_mode(mode: str, rounds: int, data_root: str, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    cpu_before = _children_cpu()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.secure_vs_plain",
                "--party",
                node,
                "--mode",
                mode,
                "--rounds",
                str(rounds),
                "--data-root",
                data_root,
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in NODES
    ]
    errors = [p.communicate(timeout=3600)[1] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{mode} run failed:\n" + "\n".join(errors))
    times = json.loads((workdir / "epoch_times.json").read_text())
    report = json.loads((workdir / NODES[0] / f"bench-{mode}" / "report.json").read_text())
    steady = times[1:] or times  # the first round includes data loading and warm-up
    return {
        "epoch_s": min(steady),
        "accuracy": report.get("final_test_accuracy"),
        "cpu_s": _children_cpu() - cpu_before,
    }


def _children_cpu() -> float:
    """CPU seconds of finished child processes (both parties, whole task)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def secure_bytes_per_batch() -> int:
    """Serialized Payload bytes of one training batch of the demo's shape (both directions)."""
    from bench.he_steps import wire_bytes
    from party_node.secure import (
        OwnKeys,
        PeerKeys,
        SecureCollaboratorLayer,
        SecureHostLayer,
        SecureParams,
    )

    p = SecureParams()
    ck = OwnKeys(p.ckks, SecureCollaboratorLayer.key_steps(20, 10, p))
    hk = OwnKeys(p.ckks, SecureHostLayer.key_steps(20, 10, p))
    host = SecureHostLayer("c", 20, 10, 0.01, 0.9, hk, PeerKeys(p.ckks, ck.public_blobs()))
    coll = SecureCollaboratorLayer("c", 20, 10, 0.01, 0.9, ck, PeerKeys(p.ckks, hk.public_blobs()))
    host.init_finish(coll.init_reply(host.init_request()))
    coll.set_host_share(host.share_message())
    total = 0
    fwd, n = wire_bytes(coll.forward(torch.randn(128, 20)))
    total += n
    z = host.forward(fwd)
    enc_x, n = wire_bytes(coll.encrypt_features())
    total += n
    grad, n = wire_bytes(host.backward(torch.randn_like(z) * 1e-3))
    total += n
    weight, n = wire_bytes(host.weight_gradient(enc_x))
    coll.finish_backward(grad)
    coll.apply_weight_gradient(weight)
    return total + n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "./data"))
    ap.add_argument("--party", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data_root = str(Path(args.data_root).resolve())
    if args.party:
        sys.exit(run_party(args.party, args.mode, args.rounds, data_root))
    with tempfile.TemporaryDirectory(prefix="heteronn-bench-") as tmp:
        plain = run_mode("plain", args.rounds, data_root, Path(tmp) / "plain")
        secure = run_mode("secure", args.rounds, data_root, Path(tmp) / "secure")
    result = {
        "bench": "secure_vs_plain",
        "secure_epoch_s": round(secure["epoch_s"], 2),
        "plain_epoch_s": round(plain["epoch_s"], 2),
        "ratio": round(secure["epoch_s"] / plain["epoch_s"], 2),
        "bytes_per_batch": secure_bytes_per_batch(),
        "rounds": args.rounds,
        "secure_accuracy": secure["accuracy"],
        "plain_accuracy": plain["accuracy"],
        # Both parties' CPU over the whole task (PSI, keys, every round, tests): on a loaded
        # machine the epoch ratio tends to this ratio, since HE is pure CPU.
        "secure_task_cpu_s": round(secure["cpu_s"], 1),
        "plain_task_cpu_s": round(plain["cpu_s"], 1),
        "load_average": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
