"""The coordinator process is killed (SIGKILL) mid-training and started again on the same
address and database: the nodes reconnect and the task finishes, because task state lives
in SQLite and nodes tolerate a coordinator gap shorter than schedule_timeout. And every
process killed at once (a power loss), then restarted with recover=True."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

from tests import pausing_nodes as task
from tests.harness import ROOT, free_port, wait_all
from tests.test_equivalence import assert_same_weights, centralized, final_weights
from wire.health_probe import check


def _coordinator(address: str, db: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "party_node.cli", "coordinator"]
    command += [f"--listen={address}", f"--db={db}", "--plaintext"]
    process = subprocess.Popen(
        command,
        cwd=db.parent,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if check(address, timeout=1.0) == "SERVING":
                return process
        except grpc.RpcError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"coordinator did not start:\n{log.read_text()}"
        time.sleep(0.1)


def test_task_survives_a_coordinator_restart(tmp_path):
    address, db, log = f"127.0.0.1:{free_port()}", tmp_path / "c.db", tmp_path / "c.log"
    first = _coordinator(address, db, log)
    task.create_task(address)
    listen = {"h": "127.0.0.1:0", "c1": "127.0.0.1:0"}
    procs = task.start_nodes(tmp_path, address, listen, {})
    second = None
    try:
        task.wait_for_pause(tmp_path, procs)
        first.kill()
        first.wait()
        second = _coordinator(address, db, log)
        task.resume(tmp_path)
        results = wait_all(procs, timeout=task.CALCULATION_TIMEOUT + 60)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    for name, r in results.items():
        assert r.code == 0, f"{name} failed after the coordinator restart:\n{r.stderr}"
        report = json.loads((tmp_path / name / task.TASK_ID / "report.json").read_text())
        assert (report["status"], report["rounds"]) == ("finished", 4), report
    # The second coordinator, not the first, saw the task through.
    lines = log.read_text().splitlines()
    restarted = max(i for i, line in enumerate(lines) if "coordinator listening on" in line)
    assert any("-> FINISHED" in line for line in lines[restarted:]), "\n".join(lines)


def test_power_loss_then_every_process_restarted_with_recover(tmp_path):
    """Coordinator and both nodes SIGKILLed at once mid-round (checkpoints every batch); the
    coordinator restarts on its database, the nodes with recover=True: the first join from a
    new process ends the stale attempt, the new one resumes from the batch every party had,
    and training ends exactly where uninterrupted training ends."""
    address, db, log = f"127.0.0.1:{free_port()}", tmp_path / "c.db", tmp_path / "c.log"
    listen = {"h": "127.0.0.1:0", "c1": "127.0.0.1:0"}
    coordinator = _coordinator(address, db, log)
    task.create_task(address, schedule_timeout=10)
    nodes = {"checkpoint_every": 1, "schedule_timeout": 10.0}
    procs = task.start_nodes(tmp_path, address, listen, {}, **nodes)
    try:
        task.wait_for_pause(tmp_path, procs)  # c1 is about to yield batch 1 of round 2
        for process in (coordinator, *procs.values()):
            process.kill()
            process.wait()
        task.resume(tmp_path)  # the restarted collaborator does not pause again
        coordinator = _coordinator(address, db, log)
        procs = task.start_nodes(tmp_path, address, listen, {}, recover=True, **nodes)
        results = wait_all(procs, timeout=task.CALCULATION_TIMEOUT + 60)
    finally:
        coordinator.kill()
    for name, r in results.items():
        assert r.code == 0, f"{name} failed after the power loss:\n{r.stderr}"
        report = json.loads((tmp_path / name / task.TASK_ID / "report.json").read_text())
        assert (report["status"], report["rounds"]) == ("finished", 4), report
        assert (report["resumed_from_round"], report["resumed_from_batch"]) == (1, 1), report
    # A new attempt: the first join from a new process interrupted the stale one (or, if the
    # nodes took longer than schedule_timeout to come back, found it FAILED heartbeat_lost).
    assert "attempt 2 (recover)" in log.read_text()
    got = final_weights(tmp_path, ["h", "c1"], task.TASK_ID)
    assert_same_weights(got, centralized(["h", "c1"], 4), 1e-6, "uninterrupted training")
