"""Start every party of a synthetic task as its own process (the seed's mock_context way:
one working directory, real gRPC on 127.0.0.1) and collect exit codes and stderr."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picked it, then it was closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Result:
    code: int
    stderr: str
    exited_at: float = 0.0  # time.monotonic() when the process ended


def spawn(
    workdir: Path,
    node: str,
    nodes: list[str],
    task: str,
    *extra: str,
    module: str = "tests.synthetic",
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """One party: `python -m <module> --node ... --nodes ... --task ...` (the host initiates
    unless `--no-initiator` is among `extra`)."""
    args = [
        sys.executable,
        "-m",
        module,
        "--node",
        node,
        "--nodes",
        ",".join(nodes),
        "--task",
        task,
        *extra,
    ]
    if node == nodes[0] and "--no-initiator" not in extra:
        args.append("--initiator")
    args = [a for a in args if a != "--no-initiator"]
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_all(procs: dict[str, subprocess.Popen], timeout: float = 180) -> dict[str, Result]:
    """Bounded wait: a hang is itself a test failure, reported with what each party said.
    Records when each process exited, so tests can time reactions between parties."""
    deadline = time.monotonic() + timeout
    exited: dict[str, float] = {}
    while len(exited) < len(procs) and time.monotonic() < deadline:
        for name, proc in procs.items():
            if name not in exited and proc.poll() is not None:
                exited[name] = time.monotonic()
        time.sleep(0.1)
    results = {}
    for name, proc in procs.items():
        if name not in exited:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"party {name} hung for {timeout} s; stderr:\n{err}")
        _, err = proc.communicate()
        results[name] = Result(proc.returncode, err, exited[name])
    return results


def run_task(
    workdir: Path,
    nodes: list[str],
    task: str,
    per_node: dict[str, list[str]] | None = None,
    common: list[str] | None = None,
    timeout: float = 180,
    module: str = "tests.synthetic",
) -> dict[str, Result]:
    per_node = per_node or {}
    procs = {
        n: spawn(workdir, n, nodes, task, *(common or []), *per_node.get(n, []), module=module)
        for n in nodes
    }
    return wait_all(procs, timeout)
