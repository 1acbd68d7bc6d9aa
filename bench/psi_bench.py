"""PSI benchmark: host and collaborator as two processes talking real gRPC on 127.0.0.1,
then openmined-psi on the same sets in the same run. N = env PSI_N (default 1,000,000) ids
per party, half shared. The last stdout line is one JSON object.

Run from the project root: `.venv/bin/python -m bench.psi_bench`. PSI_POOL=processes and
PSI_WORKERS=k choose the worker pool. openmined-psi pins an older protobuf, so it runs from
its own venv, `.venv-bench/`, created here on first use."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from bench.psi_sets import collaborator_ids, host_ids, intersection_size
from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi.pool import PsiPool
from party_node.psi.rpc import CollaboratorPsiSession, run_host_psi, serve_psi
from wire.grpc_factory import open_channel, start_server

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".venv-bench"
PEER_PINS = ["openmined-psi==2.0.6", "protobuf==6.30.2"]
TIMEOUT_S = 3600.0


def _header(sender: str):
    return lambda: common_pb2.Header(task_id="psi-bench", sender=sender, kind="psi")


def _pool() -> PsiPool:
    workers = os.environ.get("PSI_WORKERS")
    kind = os.environ.get("PSI_POOL", "threads")
    return PsiPool(int(workers) if workers else None, kind=kind)  # type: ignore[arg-type]


class _Collaborator(party_node_pb2_grpc.PartyNodeServiceServicer):
    """Creates its session when the host first calls, so its work starts with the clock."""

    def __init__(self, ids: list[str], pool: PsiPool):
        self._ids, self._pool = ids, pool
        self._lock = threading.Lock()
        self.session: CollaboratorPsiSession | None = None
        self.called = threading.Event()

    def Psi(self, request_iterator, context):
        with self._lock:
            if self.session is None:
                self.session = CollaboratorPsiSession(self._ids, self._pool, _header("collab"))
        self.called.set()
        return serve_psi(self.session, request_iterator, context)


def run_collaborator(n: int) -> None:
    """Child process: serve PSI, print the port, then the result size when it arrives."""
    ids = collaborator_ids(n)
    with _pool() as pool:
        servicer = _Collaborator(ids, pool)

        def register(server: grpc.Server) -> list[str]:
            party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
            return [party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name]

        server = start_server("127.0.0.1:0", register)
        print(f"PORT {server.port}", flush=True)
        servicer.called.wait(TIMEOUT_S)
        assert servicer.session is not None
        result = servicer.session.wait_result(TIMEOUT_S)
        print(f"RESULT {len(result)}", flush=True)
        server.stop(1.0)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children: a load-independent figure."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ours(n: int) -> float:
    """Both parties over gRPC; seconds until both know the intersection."""
    cpu_before = _cpu_seconds()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.psi_bench", "--collaborator", str(n)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        if line[:1] != ["PORT"]:
            raise SystemExit(f"collaborator did not start: {line}")
        ids = host_ids(n)
        channel = open_channel(f"127.0.0.1:{line[1]}")
        stub = party_node_pb2_grpc.PartyNodeServiceStub(channel)
        with _pool() as pool:
            start = time.perf_counter()
            final = run_host_psi({"collab": stub}, ids, _header("host"), pool, TIMEOUT_S)
            host_done = time.perf_counter() - start
            result = child.stdout.readline().split()
            seconds = time.perf_counter() - start
        channel.close()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
    want = intersection_size(n)
    if len(final) != want or result != ["RESULT", str(want)]:
        raise SystemExit(
            f"wrong intersection: host {len(final)}, collaborator {result}, expected {want}"
        )
    cpu = _cpu_seconds() - cpu_before
    print(
        f"heteronn PSI: host done {host_done:.1f} s, both done {seconds:.1f} s, "
        f"{cpu:.1f} CPU s in both parties ({2 * n / cpu:.0f} ids per CPU second)",
        flush=True,
    )
    return seconds


def _peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import private_set_intersection.python"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {PEER_VENV} for openmined-psi ({' '.join(PEER_PINS)})", flush=True)
    subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    return python


def run_peer(n: int) -> float:
    script = ROOT / "bench" / "psi_peer_openmined.py"
    python = _peer_python()
    cpu_before = _cpu_seconds()
    out = subprocess.run(
        [str(python), str(script), str(n)], check=True, capture_output=True, text=True
    )
    seconds = float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    cpu = _cpu_seconds() - cpu_before
    print(
        f"openmined-psi: {seconds:.1f} s, {cpu:.1f} CPU s ({2 * n / cpu:.0f} ids per CPU second)",
        flush=True,
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--collaborator", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.collaborator is not None:
        run_collaborator(args.collaborator)
        return
    n = int(os.environ.get("PSI_N", "1000000"))
    cores = len(os.sched_getaffinity(0))
    print(f"PSI benchmark: N={n} per party, {cores} cores, load {os.getloadavg()}", flush=True)
    seconds = run_ours(n)
    peer_seconds = run_peer(n)
    print(f"load after: {os.getloadavg()}", flush=True)
    print(
        json.dumps(
            {
                "bench": "psi",
                "n": n,
                "seconds": round(seconds, 2),
                "ids_per_s_per_core": round(2 * n / (seconds * cores), 1),
                "peer": "openmined-psi",
                "peer_seconds": round(peer_seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
