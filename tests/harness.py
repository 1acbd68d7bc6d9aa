"""Start every party of a synthetic task as its own process (the seed's mock_context way:
one working directory, real gRPC on 127.0.0.1) and collect exit codes and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    stderr: str


def spawn(workdir: Path, node: str, nodes: list[str], task: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.synthetic", "--node", node, "--nodes", ",".join(nodes),
            "--task", task, *extra]
    if node == nodes[0] and "--no-initiator" not in extra:
        args.append("--initiator")
    args = [a for a in args if a != "--no-initiator"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_all(procs: dict[str, subprocess.Popen], timeout: float = 120) -> dict[str, Result]:
    """Bounded wait: a hang is itself a test failure, reported with what each party said."""
    deadline = time.monotonic() + timeout
    results = {}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"party {name} hung for {timeout} s; stderr:\n{err}") from None
        results[name] = Result(proc.returncode, err)
    return results


def run_task(workdir: Path, nodes: list[str], task: str, per_node: dict[str, list[str]] | None = None,
             common: list[str] | None = None, timeout: float = 120) -> dict[str, Result]:
    per_node = per_node or {}
    procs = {n: spawn(workdir, n, nodes, task, *(common or []), *per_node.get(n, []))
             for n in nodes}
    return wait_all(procs, timeout)
