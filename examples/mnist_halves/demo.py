"""`make demo`: a coordinator and two `heteronn node` processes over real gRPC on
127.0.0.1, a progress bar over rounds, and the host's final test accuracy as the last line."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from examples.mnist_halves import data
from services.client import CoordinatorClient, phase_name, task_spec
from wire.config_file import settings_toml
from wire.latency_proxy import LatencyProxy

HOST, COLLABORATOR = "demo-host", "demo-collaborator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(
    path: Path, node_id: str, coordinator: str, port: int, args_: dict, extra: dict
) -> None:
    settings = {
        "node_id": node_id,
        "task_id": "mnist-halves",
        "coordinator": coordinator,
        "listen": f"127.0.0.1:{port}",
        **extra,
        "workdir": str(path.parent),
        "tls_plaintext": True,
        # Both parties share this machine: split its cores instead of oversubscribing them.
        "torch_threads": max(1, (os.cpu_count() or 2) // 2),
        "scheduler_args": args_,
    }
    path.write_text(settings_toml(settings))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["plain", "secure"], default="plain")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "./data"))
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument(
        "--seed", type=int, default=None, help="seed every party's process (reproducible runs)"
    )
    parser.add_argument(
        "--training-mode",
        default=None,
        help="exact (default), pipelined or pipelined:DEPTH (docs/performance.md)",
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="emulate a WAN: every byte between the parties crosses a proxy adding RTT/2 "
        "each way (wire/latency_proxy.py; the coordinator link stays direct)",
    )
    parser.add_argument(
        "--label-defence",
        type=json.loads,
        default=None,
        help='label_defence of every party as JSON, e.g. \'{"kind": "marvell", "power": 1}\'',
    )
    args = parser.parse_args()
    try:  # before any process starts: a missing dataset is the user's first likely mistake
        data.mnist(args.data_root, True)
        data.mnist(args.data_root, False)
    except data.MnistMissing as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    heteronn = [sys.executable, "-m", "party_node.cli"]
    cport, hport, pport = free_port(), free_port(), free_port()
    links = Links(args.rtt_ms, {HOST: hport, COLLABORATOR: pport})
    coordinator = f"127.0.0.1:{cport}"
    db = out / "coordinator.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    logs = {name: open(out / f"{name}.log", "w") for name in ("coordinator", HOST, COLLABORATOR)}  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [*heteronn, "coordinator", "--listen", coordinator, "--db", str(db), "--plaintext"],
            stdout=logs["coordinator"],
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        create_task(coordinator, args.mode)
        secure = args.mode == "secure"
        suffix = "_secure" if secure else ""
        common: dict = {"data_root": str(Path(args.data_root).resolve())}
        if args.seed is not None:
            common["seed"] = args.seed
        node_extra = {"training_mode": args.training_mode} if args.training_mode else {}
        if args.label_defence is not None:
            common["label_defence"] = args.label_defence
        write_config(
            out / "host.toml",
            HOST,
            coordinator,
            hport,
            {
                **common,
                "max_rounds": args.rounds,
                "log_rounds": 1,
                "other_key": "demo_collaborator",
            },
            {**node_extra, **links.settings(HOST)},
        )
        write_config(
            out / "collaborator.toml",
            COLLABORATOR,
            coordinator,
            pport,
            common,
            {**node_extra, **links.settings(COLLABORATOR)},
        )
        for name, role, cfg in (
            (HOST, "host", "host.toml"),
            (COLLABORATOR, "collaborator", "collaborator.toml"),
        ):
            spec = f"examples.mnist_halves.{role}{suffix}:make_scheduler"
            procs.append(
                subprocess.Popen(
                    [*heteronn, "node", "--scheduler", spec, "--config", str(out / cfg)],
                    stdout=logs[name],
                    stderr=subprocess.STDOUT,
                )
            )
        return watch(coordinator, procs, args.rounds, out)
    finally:
        links.close(out)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


class Links:
    """With an RTT, one latency proxy in front of each node: the node advertises the proxy's
    address, so every byte the other party sends it, and every answer, is delayed."""

    def __init__(self, rtt_ms: float, ports: dict[str, int]) -> None:
        self.proxies = {}
        if rtt_ms > 0:
            for name, port in ports.items():
                proxy = LatencyProxy(f"127.0.0.1:{port}", delay_s=rtt_ms / 2000)
                self.proxies[name] = proxy.start()

    def settings(self, node: str) -> dict:
        proxy = self.proxies.get(node)
        return {"advertise": proxy.address} if proxy else {}

    def close(self, out: Path) -> None:
        """Stop the proxies; what crossed them goes to <out>/links.json."""
        for proxy in self.proxies.values():
            proxy.close()
        if self.proxies:
            stats = {
                name: {
                    "connections": p.stats.connections,
                    "bytes_to_node": p.stats.bytes_up,
                    "bytes_from_node": p.stats.bytes_down,
                }
                for name, p in self.proxies.items()
            }
            (out / "links.json").write_text(json.dumps(stats, indent=1))


def create_task(coordinator: str, mode: str) -> None:
    """What an operator's service does: wait for the coordinator, then CreateTask."""
    with CoordinatorClient(coordinator) as client:
        client.wait_ready(timeout=120)
        spec = task_spec(
            "mnist-halves",
            [HOST, COLLABORATOR],
            schedule_timeout_s=60,
            calculation_timeout_s=1800,
            mode=mode,
        )
        client.create_task(spec, timeout=30)


def watch(coordinator: str, procs: list[subprocess.Popen], rounds: int, out: Path) -> int:
    client = CoordinatorClient(coordinator)
    bar = tqdm(total=rounds, desc="rounds", unit="round")
    while True:
        info = client.get_task("mnist-halves")
        phase = phase_name(info.phase)
        done = info.round - (1 if phase == "TRAIN" else 0)
        bar.n = max(bar.n, min(done, rounds))
        acc = info.metrics.get("accuracy")
        bar.set_postfix_str(f"{phase}" + (f" acc={acc:.4f}" if acc is not None else ""))
        if phase in ("FINISHED", "FAILED"):
            break
        if any(p.poll() not in (None, 0) for p in procs[1:]):
            time.sleep(2)  # let the coordinator record why
        time.sleep(0.5)
    bar.close()
    client.close()
    codes = [p.wait(timeout=60) for p in procs[1:]]
    if phase == "FAILED":
        print(f"task failed: {info.reason} (logs in {out})", file=sys.stderr)
        return 1
    report = json.loads((out / HOST / "mnist-halves" / "report.json").read_text())
    if any(codes):
        print(f"a node exited with {codes}; logs in {out}", file=sys.stderr)
        return 1
    print(f"final test accuracy: {report['final_test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
