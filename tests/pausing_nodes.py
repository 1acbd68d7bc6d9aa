"""Scheduler factories for `heteronn node --scheduler tests.pausing_nodes:host` (or
`:collaborator`): the synthetic task of tests/synthetic.py, where the collaborator stops
before its second batch of round 2 so a test can break something mid-training (a file
handshake in `signal_dir`: it writes `paused`, then waits for `resume`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from services.client import CoordinatorClient, task_spec
from tests.harness import ROOT
from tests.synthetic import Faults, SynthCollaborator, SynthHost
from wire.config_file import settings_toml

PAUSE_ROUND, PAUSE_BATCH = 2, 1


class PausingCollaborator(SynthCollaborator):
    def __init__(self, node: str, batch_size: int, signal_dir: str, **timeouts: Any) -> None:
        super().__init__(node, batch_size, Faults(""), **timeouts)
        self.signal_dir = Path(signal_dir)

    def iterate_train_feature(self, feature_model, train_ids) -> Iterator[torch.Tensor]:
        for b, features in enumerate(super().iterate_train_feature(feature_model, train_ids)):
            if (self.current_round, b) == (PAUSE_ROUND, PAUSE_BATCH):
                (self.signal_dir / "paused").touch()
                deadline = time.monotonic() + 30
                while not (self.signal_dir / "resume").exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError("the test never said resume")
                    time.sleep(0.05)
            yield features


def host(nodes: list[str], batch_size: int, rounds: int, **kwargs: Any) -> SynthHost:
    return SynthHost(nodes[0], nodes, batch_size, rounds, Faults(""), **kwargs)


def collaborator(
    node: str, batch_size: int, signal_dir: str, **timeouts: Any
) -> PausingCollaborator:
    return PausingCollaborator(node, batch_size, signal_dir, **timeouts)


# ---- the test side: create the task, start the nodes, wait for the pause -------------------

TASK_ID = "paused"
CALCULATION_TIMEOUT = 60.0
TIMEOUTS = {"schedule_timeout": 3.0, "calculation_timeout": CALCULATION_TIMEOUT}


def create_task(coordinator: str, schedule_timeout: float = TIMEOUTS["schedule_timeout"]) -> None:
    with CoordinatorClient(coordinator) as client:
        client.create_task(
            task_spec(
                TASK_ID,
                ["h", "c1"],
                schedule_timeout_s=schedule_timeout,
                calculation_timeout_s=CALCULATION_TIMEOUT,
            )
        )


def start_nodes(
    workdir: Path,
    coordinator: str,
    listen: dict[str, str],
    prefix: dict[str, list[str]],
    recover: bool = False,
    checkpoint_every: int = 0,
    schedule_timeout: float = TIMEOUTS["schedule_timeout"],
) -> dict[str, subprocess.Popen]:
    """`heteronn node` processes for h and c1 (plaintext, 4 rounds of batch 32); `prefix`
    runs a node's command inside something (e.g. `ip netns exec NAME`)."""
    factory_args = {
        "h": {
            "nodes": ["h", "c1"],
            "batch_size": 32,
            "rounds": 4,
            "checkpoint_every_batches": checkpoint_every,
        },
        "c1": {"node": "c1", "batch_size": 32, "signal_dir": str(workdir)},
    }
    procs = {}
    for name, role in (("h", "host"), ("c1", "collaborator")):
        config = workdir / f"{name}.toml"
        settings = {
            "node_id": name,
            "task_id": TASK_ID,
            "coordinator": coordinator,
            "listen": listen[name],
            "workdir": str(workdir),
            "tls_plaintext": True,
            "recover": recover,
            "torch_threads": 1,
            "scheduler_args": {
                **factory_args[name],
                **TIMEOUTS,
                "schedule_timeout": schedule_timeout,
            },
        }
        config.write_text(settings_toml(settings))
        command = [sys.executable, "-m", "party_node.cli", "node"]
        command += [f"--scheduler=tests.pausing_nodes:{role}", f"--config={config}"]
        procs[name] = subprocess.Popen(
            [*prefix.get(name, []), *command],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    return procs


def wait_for_pause(workdir: Path, procs: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while not (workdir / "paused").exists():
        assert time.monotonic() < deadline, "training never reached round 2"
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited early:\n{proc.communicate()[1]}"
        time.sleep(0.05)


def resume(workdir: Path) -> None:
    (workdir / "resume").touch()
