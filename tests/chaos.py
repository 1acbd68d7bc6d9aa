"""Kill parties of a running task at random (seeded) points, restart every party with
recover=True each time, and record what happened, for the chaos tests.

Parties are the synthetic task's processes in the seed's mock_context workflow: the host's
process embeds the coordinator, so killing it also kills the coordinator mid-write. A kill
comes a random delay after the host joined (PSI, SPLIT, a batch, a test, a checkpoint write,
or the end: whatever is running then) and hits the host, a random collaborator, or every
party at once (a power loss); each of the three comes once in every three kills, in a seeded
order. Every wait is bounded."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from party_node.runtime.checkpoint import CheckpointStore, Position
from tests.harness import ROOT

#: How long the parties left alive may take to notice a kill and stop by themselves.
SURVIVOR_EXIT_S = 90.0


@dataclass
class Kill:
    attempt: int
    delay: float
    victims: list[str]
    #: The newest position every party had on disk when all had stopped (what must resume).
    expected: Position
    exit_codes: dict[str, int] = field(default_factory=dict)


@dataclass
class ChaosRun:
    kills: list[Kill]
    attempts: int
    logs: Path


def _spawn(workdir: Path, node: str, nodes: list[str], task: str, args: list[str], log: Path):
    command = [sys.executable, "-m", "tests.synthetic", "--node", node, "--nodes", ",".join(nodes)]
    command += ["--task", task, *args]
    if node == nodes[0]:
        command.append("--initiator")
    return subprocess.Popen(
        command,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def _wait(procs: dict[str, subprocess.Popen], timeout: float, logs: dict[str, Path]) -> dict:
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs.values()):
        if time.monotonic() > deadline:
            hung = [n for n, p in procs.items() if p.poll() is None]
            for n in hung:
                procs[n].kill()
            said = "\n".join(f"--- {n}:\n{logs[n].read_text()}" for n in hung)
            raise AssertionError(f"{hung} did not stop within {timeout:g} s:\n{said}")
        time.sleep(0.05)
    return {n: p.returncode for n, p in procs.items()}


def _joined(log: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the party logged its join; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "joined task" in log.read_text():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"no join within {timeout:g} s:\n{log.read_text()}")


def resume_position(workdir: Path, nodes: list[str], task: str) -> Position:
    """The newest checkpoint position every party has on disk."""
    return min(CheckpointStore(workdir / n / task / "checkpoints").latest() for n in nodes)


def run_chaos(
    workdir: Path,
    nodes: list[str],
    task: str,
    args: list[str],
    seed: int,
    kills: int,
    window: float,
    finish_timeout: float = 300.0,
) -> ChaosRun:
    """Run the task, killing `kills` times at random; the last attempt runs to its end.
    Returns what was killed when; raises if a party hangs or the last attempt fails."""
    gen = random.Random(seed)
    targets: list[str] = []
    logs_dir = workdir / "chaos-logs"
    logs_dir.mkdir(exist_ok=True)
    done: list[Kill] = []
    for attempt in range(kills + 1):
        logs = {n: logs_dir / f"{attempt}-{n}.log" for n in nodes}
        extra = [*args, "--recover"] if attempt else list(args)
        procs = {n: _spawn(workdir, n, nodes, task, extra, logs[n]) for n in nodes}
        if attempt == kills:
            codes = _wait(procs, finish_timeout, logs)
            # (a PSI that spu cannot resume restarts afresh inside this attempt)
            failed = {n: logs[n].read_text() for n, c in codes.items() if c != 0}
            assert not failed, f"the last attempt failed: {codes}\n{failed}"
            return ChaosRun(done, attempt + 1, logs_dir)
        delay = gen.uniform(0.0, window)
        if not targets:
            targets = gen.sample(["host", "collaborator", "all"], 3)
        target = targets.pop()
        if _joined(logs[nodes[0]], procs[nodes[0]], finish_timeout):
            end = time.monotonic() + delay
            while time.monotonic() < end and any(p.poll() is None for p in procs.values()):
                time.sleep(0.01)
        live = [n for n, p in procs.items() if p.poll() is None]
        chosen = {"host": nodes[:1], "collaborator": [gen.choice(nodes[1:])], "all": nodes}
        victims = [n for n in chosen[target] if n in live]
        for n in victims:
            procs[n].send_signal(signal.SIGKILL)
        codes = _wait(procs, SURVIVOR_EXIT_S, logs)
        kill = Kill(attempt, round(delay, 3), victims, resume_position(workdir, nodes, task), codes)
        done.append(kill)
        if not victims and all(c == 0 for c in codes.values()):
            return ChaosRun(done, attempt + 1, logs_dir)  # finished before the kill
    raise AssertionError("unreachable")


def resumed_at(log: Path) -> Position | None:
    """Where an attempt's party says it resumed ('resuming from the checkpoint at ...')."""
    for line in log.read_text().splitlines():
        if "resuming from the checkpoint at " in line:
            where = line.rsplit(" at ", 1)[1].strip()
            words = where.split()
            if words[:2] == ["the", "end"]:
                return Position(int(words[-1]))
            return Position(int(words[1]) - 1, int(words[3]))
    return None
