"""A real Prometheus scrapes a running coordinator and an instrumented gRPC process on
127.0.0.1; the test asks Prometheus' HTTP API for heteronn_ series, as an operator would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT, free_port

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is not installed (Debian package `prometheus`; "
    ".ci/deploy-checks installs it)",
)

# A process like a party node: gRPC server + client with the metrics interceptors, /metrics.
_INSTRUMENTED = """
import sys, time
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from wire.grpc_factory import open_channel, start_server
from wire.metrics import Metrics, serve_metrics
metrics = Metrics(CollectorRegistry(), node_id="host", role="host")
server = start_server("127.0.0.1:0", lambda s: [], interceptors=[metrics.server_interceptor()])
serve_metrics(int(sys.argv[1]), metrics.registry, addr="127.0.0.1")
channel = open_channel(f"127.0.0.1:{server.port}", interceptors=[metrics.client_interceptor()])
stub = health_pb2_grpc.HealthStub(channel)
metrics.set_phase("scrape-test", "TRAIN", round_=2)
while True:
    stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    metrics.observe_batch("scrape-test", rows=32)
    time.sleep(0.2)
"""


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout} s") from None
            time.sleep(0.2)


def _query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _eventually(prom: str, expr: str, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = _query(prom, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    grpc_port, coord_metrics, node_metrics = free_port(), free_port(), free_port()
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "party_node.cli",
            "coordinator",
            f"--listen=127.0.0.1:{grpc_port}",
            f"--db={tmp_path / 'coordinator.db'}",
            f"--metrics-port={coord_metrics}",
            "--plaintext",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    node = subprocess.Popen(
        [sys.executable, "-c", _INSTRUMENTED, str(node_metrics)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{coord_metrics}/metrics")
        _wait_http(f"http://127.0.0.1:{node_metrics}/metrics")
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "party_node.cli",
                "task",
                f"--coordinator=127.0.0.1:{grpc_port}",
                "create",
                "--task-id=scrape-test",
                "--participants=host,bank",
                "--schedule-timeout=600",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        yield {"coordinator": coord_metrics, "node": node_metrics}
    finally:
        for proc in (coordinator, node):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def prometheus(tmp_path: Path, processes: dict[str, int]) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{ROOT / 'docker/prometheus/alerts.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: heteronn-coordinator\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{processes['coordinator']}']}}]\n"
        "  - job_name: heteronn-node\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{processes['node']}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/-/ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_prometheus_scrapes_coordinator_and_node(prometheus: str):
    up = _eventually(prometheus, 'sum(up{job=~"heteronn-.*"}) == 2')
    assert up, "Prometheus does not see both heteronn targets up"

    waiting = _eventually(
        prometheus,
        'heteronn_task_phase{job="heteronn-coordinator", task_id="scrape-test",'
        ' phase="WAITING_FOR_NODES"} == 1',
    )
    assert waiting, "the coordinator's task phase never reached Prometheus"

    calls = _eventually(
        prometheus,
        'heteronn_rpc_duration_seconds_count{job="heteronn-node",'
        ' method="grpc.health.v1.Health/Check", code="OK", side="server"} > 0',
    )
    assert calls, "RPC latency histogram of the instrumented process not scraped"
    samples = _eventually(prometheus, 'heteronn_samples_total{job="heteronn-node"} >= 32')
    assert samples and samples[0]["metric"]["task_id"] == "scrape-test"

    # the alert rules load and evaluate against live data (no task has failed here)
    rules = json.loads(urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=5).read())
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"HeteronnNodeDown", "HeteronnTaskFailed", "HeteronnRoundStalled"} <= names
    assert not _query(prometheus, 'ALERTS{alertname="HeteronnTaskFailed"}')
