"""A synthetic task (tests/synthetic.py) across an emulated WAN: a coordinator in the test
process, each party a `heteronn node` process behind its own latency proxy
(wire/latency_proxy.py) that it advertises, so every party-to-party byte is delayed; the
coordinator link stays direct. Factories: `heteronn node --scheduler tests.wan_nodes:host`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.client import CoordinatorClient, task_spec
from services.server import CoordinatorSettings, start_coordinator
from tests.harness import ROOT, Result, free_port, wait_all
from tests.synthetic import Faults, SynthCollaborator, SynthHost
from wire.config_file import settings_toml
from wire.latency_proxy import LatencyProxy

TIMEOUTS = {"schedule_timeout": 20.0, "calculation_timeout": 60.0}


def host(nodes: list[str], batch_size: int, rounds: int, **timeouts: Any) -> SynthHost:
    return SynthHost(nodes[0], nodes, batch_size, rounds, Faults(""), **timeouts)


def collaborator(node: str, batch_size: int, **timeouts: Any) -> SynthCollaborator:
    return SynthCollaborator(node, batch_size, Faults(""), **timeouts)


@dataclass
class WanRun:
    results: dict[str, Result]
    #: Bytes the proxy in front of each node forwarded to it (sent by the other parties).
    bytes_to: dict[str, int]


def run_over_wan(
    workdir: Path,
    nodes: list[str],
    task: str,
    delay_s: float,
    rounds: int,
    batch_size: int,
    training_mode: str | None = None,
) -> WanRun:
    """Run the task to its end with `delay_s` one way on every party-to-party link."""
    coordinator = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=":memory:", plaintext=True)
    )
    ports = {n: free_port() for n in nodes}
    proxies = {n: LatencyProxy(f"127.0.0.1:{ports[n]}", delay_s=delay_s).start() for n in nodes}
    try:
        with CoordinatorClient(coordinator.address) as client:
            client.create_task(
                task_spec(
                    task,
                    nodes,
                    schedule_timeout_s=TIMEOUTS["schedule_timeout"],
                    calculation_timeout_s=TIMEOUTS["calculation_timeout"],
                )
            )
        procs = {}
        for n in nodes:
            role = "host" if n == nodes[0] else "collaborator"
            args: dict[str, Any] = {"batch_size": batch_size, **TIMEOUTS}
            args.update({"nodes": nodes, "rounds": rounds} if role == "host" else {"node": n})
            settings: dict[str, Any] = {
                "node_id": n,
                "task_id": task,
                "coordinator": coordinator.address,
                "listen": f"127.0.0.1:{ports[n]}",
                "advertise": proxies[n].address,
                "workdir": str(workdir),
                "tls_plaintext": True,
                "torch_threads": 1,
                "scheduler_args": args,
            }
            if training_mode is not None:
                settings["training_mode"] = training_mode
            config = workdir / f"{n}.toml"
            config.write_text(settings_toml(settings))
            command = [sys.executable, "-m", "party_node.cli", "node"]
            command += [f"--scheduler=tests.wan_nodes:{role}", f"--config={config}"]
            procs[n] = subprocess.Popen(
                command,
                cwd=workdir,
                env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        results = wait_all(procs, timeout=240)
    finally:
        for proxy in proxies.values():
            proxy.close()
        coordinator.drain(timeout=5)
        coordinator.stop()
    return WanRun(results, {n: p.stats.bytes_up for n, p in proxies.items()})
