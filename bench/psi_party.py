"""One party of heteronn's PSI for `bench.psi_bench`, in its own process: a collaborator
serves `Psi` over gRPC, the host calls it. Each prints one JSON line with its time, the
result size and its peak RSS (this process plus its engine worker).

    python -m bench.psi_party collaborator N ENGINE [NAME START NAMES]   (prints PORT p first)
    python -m bench.psi_party host N ENGINE PORT[,PORT...]

With several collaborators (ports in the order of NAMES, the comma-separated collaborator
names), collaborator NAME holds the N ids from START; ENGINE `multiparty` runs the
multi-party protocol, an engine name one pairwise engine run per collaborator."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.psi_sets import IdRange, collaborator_ids, host_ids
from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.engine_session import EngineCollaboratorSession
from party_node.psi.multiparty_rpc import run_host_multiparty_psi
from party_node.psi.multiparty_session import MultipartyCollaboratorSession
from party_node.psi.pool import PsiPool
from party_node.psi.rpc import CollaboratorPsiSession, run_host_psi
from wire.grpc_factory import open_channel, start_server

TIMEOUT_S = 7200.0


def _header(sender: str):
    return lambda: common_pb2.Header(task_id="psi-bench", sender=sender, kind="psi")


def rss_bound_mb() -> float:
    """This process's peak RSS plus its largest finished child's (the engine worker): an
    upper bound on the party's peak (the two peaks need not coincide)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + child) / 1024, 1)


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the engine worker): the
    party's cost, which the machine's load changes far less than its wall time."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _rss_kb(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(entry)
            except (OSError, ValueError, IndexError):
                continue
    return found


class RssSampler(threading.Thread):
    """This process's RSS plus its children's (the engine worker), every 0.2 s (children
    looked up every 2 s): the party's peak, both processes together."""

    def __init__(self) -> None:
        super().__init__(name="rss", daemon=True)
        self.peak_kb = 0
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        me, children, tick = os.getpid(), [], 0
        while not self.done.wait(0.2):
            if tick % 10 == 0:  # a /proc scan costs; the worker is looked up every 2 s
                children = _children(me)
            tick += 1
            total = _rss_kb(str(me)) + sum(_rss_kb(child) for child in children)
            self.peak_kb = max(self.peak_kb, total)

    def report(self) -> dict:
        self.done.set()
        self.join()
        return {
            "peak_rss_mb": round(self.peak_kb / 1024, 1),
            "rss_bound_mb": rss_bound_mb(),
            "cpu_s": round(cpu_s(), 2),
        }


class _Collaborator(party_node_pb2_grpc.PartyNodeServiceServicer):
    def __init__(self, session):
        self.session = session

    def Psi(self, request_iterator, context):
        return self.session.handle(request_iterator, context)


def collaborator(
    n: int, engine: str, folder: Path, name: str = "collab", start: int = -1, names: str = ""
) -> None:
    """Its PSI phase starts with the process (as a node's does when the coordinator says
    PSI): the input is written while the host starts."""
    sampler = RssSampler()
    ids = collaborator_ids(n) if start < 0 else IdRange(start, n)
    pool = PsiPool() if engine == "ecdh" else None
    if pool is not None:
        session = CollaboratorPsiSession(list(ids), pool, _header(name))
    elif engine == "multiparty":
        session = MultipartyCollaboratorSession(
            ids,
            _header(name),
            node_id=name,
            task_id="psi-bench",
            collaborators=names.split(","),
            timeout=TIMEOUT_S,
        )
    else:
        options = EngineOptions(engine=engine, folder=folder)
        session = EngineCollaboratorSession(
            ids, options, _header(name), node_id=name, timeout=TIMEOUT_S
        )

    def register(server: grpc.Server) -> list[str]:
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(_Collaborator(session), server)
        return [party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name]

    server = start_server("127.0.0.1:0", register)
    print(f"PORT {server.port}", flush=True)
    started = time.perf_counter()
    result = session.wait_result(TIMEOUT_S)
    seconds = time.perf_counter() - started
    server.stop(1.0)
    if pool is not None:
        pool.close()
    report = {"result": len(result), "seconds": seconds, **sampler.report()}
    print(json.dumps(report), flush=True)


def host(n: int, engine: str, ports: list[int], folder: Path, names: list[str]) -> None:
    sampler = RssSampler()
    ids = host_ids(n)
    channels = [open_channel(f"127.0.0.1:{port}") for port in ports]
    stubs = {
        name: party_node_pb2_grpc.PartyNodeServiceStub(channel)
        for name, channel in zip(names, channels, strict=True)
    }
    started = time.perf_counter()
    if engine == "multiparty":
        final = run_host_multiparty_psi(stubs, ids, _header("host"), TIMEOUT_S)
    elif engine == "ecdh":
        with PsiPool() as pool:
            final = run_host_psi(stubs, list(ids), _header("host"), pool, TIMEOUT_S)
    else:
        options = EngineOptions(engine=engine, folder=folder)
        final = run_host_engine_psi(stubs, ids, _header("host"), options, TIMEOUT_S)
    seconds = time.perf_counter() - started
    for channel in channels:
        channel.close()
    report = {"result": len(final), "seconds": seconds, **sampler.report()}
    print(json.dumps(report), flush=True)


def main() -> None:
    role, n, engine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with tempfile.TemporaryDirectory(prefix=f"psi-bench-{role}-") as folder:
        if role == "collaborator" and len(sys.argv) > 4:
            collaborator(n, engine, Path(folder), sys.argv[4], int(sys.argv[5]), sys.argv[6])
        elif role == "collaborator":
            collaborator(n, engine, Path(folder))
        else:
            ports = [int(port) for port in sys.argv[4].split(",")]
            names = ["collab"] if len(ports) == 1 else [f"c{i}" for i in range(len(ports))]
            host(n, engine, ports, Path(folder), names)


if __name__ == "__main__":
    main()
