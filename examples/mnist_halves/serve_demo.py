"""`make demo-serve [MODE=secure]`: the MNIST-halves model served over gRPC.

Trains the demo (or reuses a finished run's bundles in --out), starts both parties'
`heteronn serve` processes under mutual TLS, sends all 2,000 test ids through the public
Predict RPC, one id per call and in batches, and prints the training run's final test
accuracy and the served accuracy. They must be equal: exit 1 otherwise."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from examples.mnist_halves import data
from examples.mnist_halves.demo import COLLABORATOR, HOST, free_port
from heteronn.v1 import serving_pb2, serving_pb2_grpc
from wire import dev_certs
from wire.config_file import settings_toml
from wire.grpc_factory import open_channel
from wire.health_probe import wait_serving
from wire.tls import TlsSettings

TASK = "mnist-halves"
CLIENT = "demo-client"
#: The test ids both parties hold (data.HOST_IDS and data.COLLABORATOR_IDS).
TEST_IDS = [str(data.TEST_OFFSET + j) for j in range(3_000, 5_000)]


def tls_files(certs: Path, name: str) -> dict[str, str]:
    return {f"tls_{kind}_file": str(certs / f"{stem}") for kind, stem in
            (("ca", "ca.crt"), ("cert", f"{name}.crt"), ("key", f"{name}.key"))}


def client_tls(certs: Path, name: str) -> TlsSettings:
    files = tls_files(certs, name)
    return TlsSettings(ca_file=files["tls_ca_file"], cert_file=files["tls_cert_file"],
                       key_file=files["tls_key_file"])


def finished_report(out: Path, mode: str, rounds: int) -> dict | None:
    """The host's report of a finished run with this mode and rounds whose bundles exist."""
    report_path = out / HOST / TASK / "report.json"
    try:
        report = json.loads(report_path.read_text())
        manifest = json.loads((out / HOST / TASK / "model" / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    fresh = (
        report.get("status") == "finished"
        and report.get("rounds") == rounds
        and manifest.get("mode") == mode
        and manifest.get("predictor", {}).get("script")
        and (out / COLLABORATOR / TASK / "model" / "manifest.json").is_file()
    )
    return report if fresh else None


def train(args: argparse.Namespace) -> dict:
    report = finished_report(args.out, args.mode, args.rounds)
    if report is not None:
        print(f"reusing the finished {args.mode} run in {args.out}", file=sys.stderr)
        return report
    command = [sys.executable, "-m", "examples.mnist_halves.demo", "--mode", args.mode,
               "--rounds", str(args.rounds), "--data-root", args.data_root, "--out", str(args.out)]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if subprocess.run(command).returncode != 0:
        raise SystemExit("training failed; see the logs above")
    report = finished_report(args.out, args.mode, args.rounds)
    if report is None:
        raise SystemExit(f"training finished without a servable bundle in {args.out}")
    return report


def serve(args: argparse.Namespace, certs: Path) -> tuple[list[subprocess.Popen], str]:
    """Both serving nodes (collaborator first); the host's address."""
    heteronn = [sys.executable, "-m", "party_node.cli", "serve"]
    suffix = "_secure" if args.mode == "secure" else ""
    procs, addresses = [], {}
    for node, role in ((COLLABORATOR, "collaborator"), (HOST, "host")):
        port = free_port()
        addresses[node] = f"127.0.0.1:{port}"
        settings = {
            "node_id": node,
            "bundle": str(args.out / node / TASK / "model"),
            "listen": addresses[node],
            "workdir": str(args.out),
            **tls_files(certs, node),
            "scheduler_args": {"data_root": str(Path(args.data_root).resolve())},
        }
        if role == "host":
            settings["collaborators"] = {COLLABORATOR: addresses[COLLABORATOR]}
        config = args.out / f"{node}-serve.toml"
        config.write_text(settings_toml(settings))
        log = (args.out / f"{node}-serve.log").open("w")
        proc = subprocess.Popen(
            [*heteronn, "--scheduler", f"examples.mnist_halves.{role}{suffix}:make_scheduler",
             "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        if not wait_serving(addresses[node], client_tls(certs, CLIENT), node, 300,
                            lambda p=proc: p.poll() is None):
            raise SystemExit(f"{node} did not start serving; see {args.out / f'{node}-serve.log'}")
    return procs, addresses[HOST]


def predict_all(stub: serving_pb2_grpc.PredictionServiceStub, batch: int) -> list[int]:
    """The predicted class of every test id: one id per call (8 callers) or `batch` per call."""
    def one(chunk: list[str]) -> list[int]:
        reply = stub.Predict(serving_pb2.PredictRequest(ids=chunk), timeout=30)
        for p in reply.predictions:
            if p.status != serving_pb2.PREDICTION_STATUS_OK:
                raise SystemExit(f"id {p.id} was not found at {list(p.missing_at)}")
        return [p.predicted_class for p in reply.predictions]

    chunks = [TEST_IDS[s : s + batch] for s in range(0, len(TEST_IDS), batch)]
    desc = "one id per call" if batch == 1 else f"{batch} ids per call"
    with ThreadPoolExecutor(8 if batch == 1 else 2) as pool:
        results = list(tqdm(pool.map(one, chunks), total=len(chunks), desc=desc, unit="call"))
    return [c for part in results for c in part]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["plain", "secure"], default="plain")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "./data"))
    parser.add_argument("--out", type=Path, default=None, help="default out/demo-serve-MODE")
    parser.add_argument("--seed", type=int, default=None, help="passed to the training demo")
    args = parser.parse_args()
    args.out = (args.out or Path(f"out/demo-serve-{args.mode}")).resolve()
    try:
        data.mnist(args.data_root, False)
    except data.MnistMissing as exc:
        print(f"demo-serve: {exc}", file=sys.stderr)
        return 2
    report = train(args)
    certs = args.out / "certs"
    for name in (HOST, COLLABORATOR):
        dev_certs.issue(certs, name)
    dev_certs.issue(certs, CLIENT, client_only=True)
    procs, address = serve(args, certs)
    try:
        channel = open_channel(address, client_tls(certs, CLIENT), server_name=HOST)
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        _, labels = data.mnist(args.data_root, train=False)
        truth = [int(labels[int(i) - data.TEST_OFFSET]) for i in TEST_IDS]
        single = predict_all(stub, 1)
        batched = predict_all(stub, 100)
        channel.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    correct = sum(p == t for p, t in zip(single, truth, strict=True))
    trained = float(report["final_test_accuracy"])
    served = correct / len(TEST_IDS)
    same = "the same predictions" if batched == single else "DIFFERENT predictions"
    print(f"{correct}/{len(TEST_IDS)} test ids right, one id per call; in batches of 100: {same}",
          file=sys.stderr)
    print(f"final test accuracy: {trained:.4f}")
    print(f"served accuracy: {served:.4f}")
    if batched != single or round(trained * len(TEST_IDS)) != correct:
        print("served predictions differ from the training run's final test", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
