"""Serving latency and throughput, plain and secure, and batch prediction.

Trains the tabular task of bench/predict_task.py (100,000 ids at both parties) in plain and
secure mode, then for each mode starts the collaborator's and the host's `heteronn serve` as
two processes under mutual TLS and measures from this process, over gRPC like any client:
- one id per call, one caller: p50 and p99 latency;
- one id per call, 32 concurrent callers: predictions per second;
and (plain) the batch job over the 100,000 ids against the collaborator's serving node, its
PSI timed apart. Last stdout line:
{"bench": "predict", "p50_ms": ..., "p99_ms": ..., "predictions_per_s": ...,
 "secure_p50_ms": ..., "secure_p99_ms": ..., "secure_predictions_per_s": ...,
 "batch_predictions_per_s": ..., "batch_psi_s": ..., "load": ...}

    python -m bench.predict_bench [--calls 500] [--seconds 10] [--skip-secure]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench import predict_task as task
from heteronn.v1 import serving_pb2, serving_pb2_grpc
from party_node.simulate import run_local
from wire import dev_certs
from wire.config_file import settings_toml
from wire.grpc_factory import open_channel
from wire.health_probe import wait_serving
from wire.tls import TlsSettings

ROOT = Path(__file__).resolve().parents[1]
HOST, COLLAB = task.BenchHost.key, task.BenchCollaborator.key
CALLERS = 32


def tls_files(certs: Path, name: str) -> dict[str, str]:
    return {"tls_ca_file": str(certs / "ca.crt"), "tls_cert_file": str(certs / f"{name}.crt"),
            "tls_key_file": str(certs / f"{name}.key")}


def tls(certs: Path, name: str) -> TlsSettings:
    f = tls_files(certs, name)
    return TlsSettings(ca_file=f["tls_ca_file"], cert_file=f["tls_cert_file"],
                       key_file=f["tls_key_file"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """The collaborator's and the host's serving processes for one trained task."""

    def __init__(
        self, work: Path, certs: Path, task_id: str, secure: bool, **host_settings: object
    ) -> None:
        prefix = "make_secure_" if secure else "make_"
        self.procs: list[subprocess.Popen] = []
        self.addresses: dict[str, str] = {}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for node, factory in ((COLLAB, "collaborator"), (HOST, "host")):
            self.addresses[node] = f"127.0.0.1:{free_port()}"
            settings = {
                "node_id": node, "bundle": str(work / node / task_id / "model"),
                "listen": self.addresses[node], "workdir": str(work), **tls_files(certs, node),
                "max_batch": 256, "max_wait_ms": 1.0,
            }
            if node == HOST:
                settings["collaborators"] = {COLLAB: self.addresses[COLLAB]}
                settings.update(host_settings)
            config = work / f"{task_id}-{node}.toml"
            config.write_text(settings_toml(settings))
            log = (work / f"{task_id}-{node}.log").open("w")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "party_node.cli", "serve", "--scheduler",
                 f"bench.predict_task:{prefix}{factory}", "--config", str(config)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
            proc = self.procs[-1]
            if not wait_serving(self.addresses[node], tls(certs, "client"), node, 300,
                                lambda p=proc: p.poll() is None):
                self.stop()
                raise SystemExit(f"{node} did not serve; see {work / f'{task_id}-{node}.log'}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def latency(stub, calls: int) -> tuple[float, float]:
    """p50, p99 (ms) of `calls` sequential one-id Predicts (after 50 warm-up calls)."""
    for i in range(50):
        stub.Predict(serving_pb2.PredictRequest(ids=[str(i)]), timeout=30)
    times = []
    for i in range(calls):
        started = time.perf_counter()
        stub.Predict(serving_pb2.PredictRequest(ids=[str(1000 + i)]), timeout=30)
        times.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(times, n=100)
    return round(statistics.median(times), 2), round(q[98], 2)


def throughput(address: str, certs: Path, seconds: float) -> float:
    """One-id Predicts per second from CALLERS concurrent callers for `seconds`."""
    channel = open_channel(address, tls(certs, "client"), server_name=HOST)
    stub = serving_pb2_grpc.PredictionServiceStub(channel)
    done = [0] * CALLERS
    failures: list[str] = []
    stop = time.monotonic() + seconds

    def caller(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            try:
                stub.Predict(serving_pb2.PredictRequest(ids=[str(i % task.N_IDS)]), timeout=30)
                done[k] += 1
            except grpc.RpcError as err:
                failures.append(f"{err.code().name}: {err.details()}")
                return
            i += CALLERS

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    elapsed = time.monotonic() - started
    channel.close()
    if failures:
        raise SystemExit(f"a caller failed: {failures[0]}")
    return round(sum(done) / elapsed, 1)


def measure(work: Path, certs: Path, task_id: str, secure: bool, args) -> dict[str, float]:
    pair = Pair(work, certs, task_id, secure)
    try:
        address = pair.addresses[HOST]
        channel = open_channel(address, tls(certs, "client"), server_name=HOST)
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        p50, p99 = latency(stub, args.calls)
        channel.close()
        rate = throughput(address, certs, args.seconds)
        out = {"p50_ms": p50, "p99_ms": p99, "predictions_per_s": rate}
        if not secure:
            out.update(batch(work, certs, task_id, pair.addresses[COLLAB]))
        return out
    finally:
        pair.stop()


def batch(work: Path, certs: Path, task_id: str, collaborator: str) -> dict[str, float]:
    """The batch job over every id, at the host (this process) against the collaborator."""
    from party_node.app import run_batch_predict
    from party_node.settings import ServingSettings

    settings = ServingSettings(
        node_id=HOST, bundle=work / HOST / task_id / "model", **tls_files(certs, HOST),
        collaborators={COLLAB: collaborator},
    )
    report = run_batch_predict(
        task.make_host(), settings, work / "predictions.csv", batch_rows=8192, progress=False
    )
    assert report.predicted == task.N_IDS, report
    return {"batch_predictions_per_s": report.predictions_per_s, "batch_psi_s": report.psi_seconds}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500, help="sequential calls for p50/p99")
    parser.add_argument("--seconds", type=float, default=10.0, help="concurrent load duration")
    parser.add_argument("--skip-secure", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        work = Path(tmp)
        certs = work / "certs"
        for name in (HOST, COLLAB):
            dev_certs.issue(certs, name)
        dev_certs.issue(certs, "client", client_only=True)
        print("training the plain bundles", file=sys.stderr, flush=True)
        run_local(task.make_host(), [task.make_collaborator()], task_id="plain", workdir=work)
        result: dict[str, object] = {"bench": "predict"}
        result.update(measure(work, certs, "plain", False, args))
        print(f"plain: {result}", file=sys.stderr, flush=True)
        if not args.skip_secure:
            print("training the secure bundles", file=sys.stderr, flush=True)
            run_local(task.make_secure_host(), [task.make_secure_collaborator()],
                      task_id="secure", workdir=work)
            secure = measure(work, certs, "secure", True, args)
            result.update({f"secure_{k}": v for k, v in secure.items()})
        result["targets"] = {"p50_ms": 5, "p99_ms": 20, "predictions_per_s": 1000,
                             "batch_predictions_per_s": 50000, "secure_p50_ms": 80,
                             "secure_predictions_per_s": 500}
        result["load"] = os.getloadavg()[0]
        result["cores"] = os.cpu_count()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
