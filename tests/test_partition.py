"""A network partition between two live parties, made with real packet drops.

The collaborator runs in its own network namespace (a second host); mid-training iptables
silently drops everything between it and the host while both still reach the coordinator.
No RST and no closed socket: the case where a naive system waits forever. Every party must
exit non-zero well before calculation_timeout, saying which peer it lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heteronn.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.server import CoordinatorSettings, start_coordinator
from tests.harness import ROOT, wait_all
from tests.netns import Namespace
from wire.config_file import settings_toml
from wire.grpc_factory import open_channel

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)

CALCULATION_TIMEOUT = 60.0
TIMEOUTS = {"schedule_timeout": 3.0, "calculation_timeout": CALCULATION_TIMEOUT}


def _node_config(path: Path, node: str, listen: str, coordinator: str, factory_args: dict) -> Path:
    settings = {
        "node_id": node,
        "task_id": "cut",
        "coordinator": coordinator,
        "listen": listen,
        "workdir": str(path.parent),
        "tls_plaintext": True,
        "torch_threads": 1,
        "scheduler_args": factory_args,
    }
    path.write_text(settings_toml(settings))
    return path


def _cut_mid_training(tmp_path: Path, keep_coordinator: bool) -> tuple[dict, float]:
    """Run the task with the collaborator in its own namespace; when it pauses in round 2,
    drop its traffic (all of it, or all but the coordinator's). Returns each party's result
    and the seconds from the cut until both had exited."""
    with Namespace() as ns:
        coordinator = start_coordinator(
            CoordinatorSettings(listen=f"{ns.root_ip}:0", db=":memory:")
        )
        try:
            with open_channel(coordinator.address) as channel:
                coordinator_pb2_grpc.CoordinatorStub(channel).CreateTask(
                    coordinator_pb2.CreateTaskRequest(
                        spec=coordinator_pb2.TaskSpec(
                            task_id="cut",
                            participants=["h", "c1"],
                            schedule_timeout_s=TIMEOUTS["schedule_timeout"],
                            calculation_timeout_s=CALCULATION_TIMEOUT,
                            mode="plain",
                        )
                    ),
                    timeout=10,
                )
            nodes = {
                "h": ([], ns.root_ip, {"nodes": ["h", "c1"], "batch_size": 32, "rounds": 4}),
                "c1": (
                    ns.prefix,
                    ns.inside_ip,
                    {"node": "c1", "batch_size": 32, "signal_dir": str(tmp_path)},
                ),
            }
            procs = {}
            for name, (prefix, ip, args) in nodes.items():
                config = _node_config(
                    tmp_path / f"{name}.toml",
                    name,
                    f"{ip}:0",
                    coordinator.address,
                    {**args, **TIMEOUTS},
                )
                role = "host" if name == "h" else "collaborator"
                command = [
                    *prefix,
                    sys.executable,
                    "-m",
                    "party_node.cli",
                    "node",
                    f"--scheduler=tests.partition_nodes:{role}",
                    f"--config={config}",
                ]
                procs[name] = subprocess.Popen(
                    command,
                    cwd=tmp_path,
                    env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            deadline = time.monotonic() + 120
            while not (tmp_path / "paused").exists():
                assert time.monotonic() < deadline, "training never reached round 2"
                assert all(p.poll() is None for p in procs.values()), "a node exited early"
                time.sleep(0.05)
            ns.drop_all_but([coordinator.port] if keep_coordinator else [])
            cut_at = time.monotonic()
            (tmp_path / "partitioned").touch()
            results = wait_all(procs, timeout=CALCULATION_TIMEOUT + 60)
            elapsed = time.monotonic() - cut_at
        finally:
            coordinator.drain(timeout=5)
            coordinator.stop()
    for name, r in results.items():
        assert r.code != 0, f"{name} finished despite the partition:\n{r.stderr}"
    assert elapsed < CALCULATION_TIMEOUT / 2, (
        f"the partition was noticed only after {elapsed:.0f} s"
    )
    return results, elapsed


def _last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_partition_between_parties_ends_the_task_naming_the_link(tmp_path):
    results, _ = _cut_mid_training(tmp_path, keep_coordinator=True)
    for name, r in results.items():  # the first report wins, and names the broken link
        last = _last_line(r)
        assert "cannot deliver" in last and "'c1'" in last and "'h'" in last, f"{name}: {last}"
        assert "network" in last, f"{name}: the message does not suggest the network: {last}"


def test_party_cut_off_from_everyone_is_declared_lost(tmp_path):
    """The collaborator loses the coordinator too: the coordinator stops hearing its
    heartbeats and fails the task for the host; the collaborator fails on its own."""
    results, _ = _cut_mid_training(tmp_path, keep_coordinator=False)
    host = _last_line(results["h"])
    assert "node 'c1' stopped sending heartbeats" in host, host
    collaborator = _last_line(results["c1"])
    assert "host 'h'" in collaborator or "coordinator" in collaborator, collaborator
