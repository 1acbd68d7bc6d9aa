"""A party node as a process and as a caller's thread (issue 9, item 10): SIGTERM ends its
task at once and everywhere, its settings file may come from HETERONN_NODE_CONFIG, and under
`simulate.run_local` a stuck party never interrupts (or ends) the caller's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heteronn.v1 import common_pb2
from party_node import TaskFailed
from party_node.settings import NodeSettings
from party_node.simulate import run_local
from services.client import CoordinatorClient, task_spec
from services.server import CoordinatorSettings, start_coordinator
from tests import synthetic as syn
from tests.harness import ROOT, free_port
from wire.config_file import settings_toml


def test_sigterm_fails_the_task_at_the_coordinator_at_once(tmp_path: Path) -> None:
    """The node reads its settings from HETERONN_NODE_CONFIG, joins, and is stopped with
    SIGTERM: the task FAILS within seconds naming the node, not after a join timeout."""
    coordinator = start_coordinator(
        CoordinatorSettings(listen="127.0.0.1:0", db=":memory:", plaintext=True)
    )
    client = CoordinatorClient(coordinator.address, timeout=5)
    try:
        client.create_task(task_spec("t", ["h", "c1"], schedule_timeout_s=120))
        config = tmp_path / "h.toml"
        config.write_text(settings_toml({
            "node_id": "h", "task_id": "t", "coordinator": coordinator.address,
            "listen": f"127.0.0.1:{free_port()}", "workdir": str(tmp_path),
            "tls_plaintext": True,
            "scheduler_args": {"nodes": ["h", "c1"], "batch_size": 32, "rounds": 2,
                               "schedule_timeout": 120, "calculation_timeout": 60},
        }))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}",
               "HETERONN_NODE_CONFIG": str(config)}
        node = subprocess.Popen(
            [sys.executable, "-m", "party_node.cli", "node", "--scheduler",
             "tests.pausing_nodes:host"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not any(p.joined for p in client.get_task("t").participants):
                assert node.poll() is None, node.communicate()[1]
                assert time.monotonic() < deadline, "the node never joined"
                time.sleep(0.1)
            stopped = time.monotonic()
            node.send_signal(signal.SIGTERM)
            assert node.wait(timeout=30) == 1
            task = client.get_task("t")
            assert task.phase == common_pb2.PHASE_FAILED
            assert time.monotonic() - stopped < 10
            assert "host 'h'" in task.reason and "stopped by SIGTERM" in task.reason
            assert "stopped by SIGTERM" in node.stderr.read()  # type: ignore[union-attr]
        finally:
            if node.poll() is None:
                node.kill()
    finally:
        client.close()
        coordinator.stop(0)


def test_settings_file_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('node_id = "bank"\ntask_id = "t"\ncoordinator = "c:1"\n'
                      "tls_plaintext = true\nmax_streams_per_sender = 2\n")
    monkeypatch.setenv("HETERONN_NODE_CONFIG", str(config))
    settings = NodeSettings.load(task_id="t2")
    assert (settings.node_id, settings.task_id, settings.max_streams_per_sender) == (
        "bank", "t2", 2
    )


def test_run_local_never_interrupts_the_callers_process(tmp_path: Path) -> None:
    """A party stuck past calculation_timeout: run_local raises TaskFailed naming it; the
    caller's main thread gets no KeyboardInterrupt and its process lives on."""
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        host = syn.SynthHost("h", ["h", "c1"], 32, 1, syn.Faults("host_sleep=1"),
                             schedule_timeout=10, calculation_timeout=2)
        collaborator = syn.SynthCollaborator("c1", 32, syn.Faults(""), schedule_timeout=10,
                                             calculation_timeout=30)
        started = time.monotonic()
        with pytest.raises(TaskFailed, match="took longer than calculation_timeout=2 s"):
            run_local(host, [collaborator], task_id="stuck", workdir=tmp_path)
        assert time.monotonic() - started < 60
        time.sleep(1.0)
        assert interrupted == [], "the watchdog sent SIGINT to the caller's process"
        assert threading.main_thread().is_alive()
    finally:
        signal.signal(signal.SIGINT, previous)
