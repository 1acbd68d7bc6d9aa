"""Training across an emulated WAN (docs/performance.md): `make demo`'s deployment (a
coordinator and two `heteronn node` processes, MNIST halves, 79 batches of 128 a round), with
every byte between the parties through wire/latency_proxy.py, which delays each chunk by
RTT/2 each way (the coordinator link stays direct). Runs one after another, same seed:

1. round time, 3 rounds each (the fastest round counts: the machine is shared): exact mode
   with no delay (`lan`), exact at the RTT, and pipelined at each candidate depth at the RTT;
   the fastest pipelined run is the tolerant mode;
2. accuracy, 20 rounds each: exact and the tolerant mode. Both modes are deterministic for a
   seed whatever the timing (the collaborator waits for gradient b before computing batch
   b+depth), so these run without delay; `rtt_independent` checks it: the 3 timed rounds at
   the RTT reached the same test accuracies as the first 3 of the 20.

`--table` instead prints the fastest round of exact and of depths 4, 8 and 16 at 0/20/50/100 ms
(3 rounds each).

Last stdout line: {"bench": "wan", "rtt_ms", "lan_round_s", "exact_round_s",
"tolerant_round_s", "tolerant_mode", "tolerant_vs_lan", "exact_accuracy",
"tolerant_accuracy", "accuracy_delta_points", "rtt_independent", "proxied_mb", "load_1m"}"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from examples.mnist_halves import data

RTT_MS = 50.0
DEPTHS = (4, 8)
TABLE_DEPTHS = (4, 8, 16)
TIMED_ROUNDS = 3
ACCURACY_ROUNDS = 20
SEED = 1


def demo(rounds: int, rtt_ms: float, mode: str, root: str, seed: int) -> dict:
    """One demo run; its host report plus what crossed the proxies."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "examples.mnist_halves.demo", "--rounds", str(rounds)]
        cmd += ["--data-root", root, "--out", out, "--seed", str(seed)]
        cmd += ["--rtt-ms", str(rtt_ms), "--training-mode", mode]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"wan: the demo failed ({mode}, {rtt_ms} ms):\n{done.stderr[-3000:]}")
        report = json.loads((Path(out) / "demo-host" / "mnist-halves" / "report.json").read_text())
        links = Path(out) / "links.json"
        report["links"] = json.loads(links.read_text()) if links.exists() else {}
    report["accuracies"] = [round(t["accuracy"], 6) for t in report.get("test_history", [])]
    return report


def fastest_round(report: dict) -> float:
    return min(report["round_seconds"])


def proxied_bytes(report: dict) -> int:
    """Bytes the proxies forwarded to the nodes; both must have received a round's worth."""
    links = report["links"]
    # 79 batches x 128 rows x 20 float32 columns each way per round, at the least.
    floor = TIMED_ROUNDS * 79 * 128 * 20 * 4
    for node, stats in links.items():
        if stats["bytes_to_node"] < floor:
            raise SystemExit(f"wan: only {stats['bytes_to_node']} bytes reached {node} via proxy")
    return sum(s["bytes_to_node"] + s["bytes_from_node"] for s in links.values())


def timed(rtt_ms: float, root: str, seed: int, depths: tuple[int, ...]) -> tuple[dict, dict, str]:
    """Exact and the fastest pipelined depth at `rtt_ms`: (exact, tolerant, tolerant mode)."""
    exact = demo(TIMED_ROUNDS, rtt_ms, "exact", root, seed)
    runs = {
        f"pipelined:{d}": demo(TIMED_ROUNDS, rtt_ms, f"pipelined:{d}", root, seed) for d in depths
    }
    for mode, r in {"exact": exact, **runs}.items():
        print(f"{rtt_ms:g} ms {mode}: rounds {r['round_seconds']}", file=sys.stderr)
    best = min(runs, key=lambda m: fastest_round(runs[m]))
    return exact, runs[best], best


def table(root: str, seed: int) -> None:
    """One JSON line per RTT: the fastest round of exact and of each depth."""
    for rtt in (0.0, 20.0, 50.0, 100.0):
        row: dict = {"rtt_ms": rtt}
        for mode in ("exact", *(f"pipelined:{d}" for d in TABLE_DEPTHS)):
            row[mode] = fastest_round(demo(TIMED_ROUNDS, rtt, mode, root, seed))
        row["load_1m"] = round(os.getloadavg()[0], 1)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rtt-ms", type=float, default=RTT_MS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--table", action="store_true", help="0/20/50/100 ms, round time only")
    args = parser.parse_args()
    root = os.environ.get("DATA_ROOT", "./data")
    try:
        data.mnist(root, True)
    except data.MnistMissing as exc:
        raise SystemExit(f"wan: {exc}") from None
    if args.table:
        table(root, args.seed)
        return
    lan = demo(TIMED_ROUNDS, 0.0, "exact", root, args.seed)
    exact, tolerant, mode = timed(args.rtt_ms, root, args.seed, DEPTHS)
    proxied = proxied_bytes(exact) + proxied_bytes(tolerant)
    exact_long = demo(ACCURACY_ROUNDS, 0.0, "exact", root, args.seed)
    tolerant_long = demo(ACCURACY_ROUNDS, 0.0, mode, root, args.seed)
    independent = (
        exact["accuracies"] == exact_long["accuracies"][:TIMED_ROUNDS] == lan["accuracies"]
        and tolerant["accuracies"] == tolerant_long["accuracies"][:TIMED_ROUNDS]
    )
    exact_acc = exact_long["final_test_accuracy"]
    tolerant_acc = tolerant_long["final_test_accuracy"]
    result = {
        "bench": "wan",
        "rtt_ms": args.rtt_ms,
        "lan_round_s": fastest_round(lan),
        "exact_round_s": fastest_round(exact),
        "tolerant_round_s": fastest_round(tolerant),
        "tolerant_mode": mode,
        "tolerant_vs_lan": round(fastest_round(tolerant) / fastest_round(lan), 3),
        "exact_accuracy": exact_acc,
        "tolerant_accuracy": tolerant_acc,
        "accuracy_delta_points": round(100 * (tolerant_acc - exact_acc), 2),
        "rtt_independent": independent,
        "proxied_mb": round(proxied / 1e6, 1),
        "load_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
