"""PSI benchmark, side by side in one run on the same id sets (N = env PSI_N, default 2^20
ids per party, half shared):

- heteronn: host and collaborator as two processes (`bench.psi_party`) over gRPC on
  127.0.0.1, with the node's PSI engine (env PSI_ENGINE, default spu-rr22; `ecdh` runs the
  in-process ECDH protocol), its engine link over mutual TLS;
- SecretFlow's spu 0.9.5 (`psi_execute`, ECDH-25519 and RR22) as SecretFlow users run it:
  two processes from the PSI engine's venv (.venv-psi, created by `make install`) over
  spu's brpc link on 127.0.0.1, no TLS, one `id` CSV column per party.

Each party reports its peak RSS (`peak_rss_mb`: its process and its engine worker together,
sampled every 0.2 s; `rss_bound_mb`: the sum of the two processes' own peaks, an upper
bound). Then, unless PSI_MULTIPARTY=0, three parties (host and two collaborators) with the
multi-party protocol and with pairwise RR22 (`bench.psi_multiparty`): `multiparty_seconds`,
`pairwise_seconds`, `multiparty_vs_pairwise`. The last stdout line is one JSON object.
Run from the project root: `.venv/bin/python -m bench.psi_bench`."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.psi_multiparty import compare, run_host, start_collaborator
from bench.psi_sets import collaborator_ids, host_ids, intersection_size, write_csv
from party_node.psi.engine import engine_python, free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "party_node" / "psi" / "spu_worker.py"
TIMEOUT_S = 7200
SPU_LINK = "two processes over spu's brpc link on 127.0.0.1, no TLS"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))


def run_ours(n: int, engine: str) -> dict:
    """Both parties of heteronn's PSI; seconds until both know the intersection."""
    collab, port = start_collaborator([str(n), engine], "collaborator")
    try:
        started = time.perf_counter()
        host_report = run_host([str(n), engine, port], "heteronn's host")
        assert collab.stdout is not None
        collab_report = json.loads(collab.stdout.readline())
        seconds = time.perf_counter() - started
        collab.wait(60)
    finally:
        if collab.poll() is None:
            collab.kill()
    want = intersection_size(n)
    if host_report["result"] != want or collab_report["result"] != want:
        raise SystemExit(
            f"wrong intersection: host {host_report['result']}, collaborator "
            f"{collab_report['result']}, expected {want}"
        )
    print(f"heteronn ({engine}): {seconds:.1f} s", flush=True)
    return {
        "seconds": seconds,
        "peak_rss_mb": {
            "host": host_report["peak_rss_mb"],
            "collaborator": collab_report["peak_rss_mb"],
        },
        "rss_bound_mb": {
            "host": host_report["rss_bound_mb"],
            "collaborator": collab_report["rss_bound_mb"],
        },
    }


def run_spu(n: int, protocol: str, folder: Path) -> dict:
    """spu's own PSI, both ends as processes of the engine venv; the slower end's time."""
    python = engine_python()
    inputs = [folder / "host.csv", folder / "collaborator.csv"]
    ports = [free_port(), free_port()]
    parties = [["host", f"127.0.0.1:{ports[0]}"], ["collaborator", f"127.0.0.1:{ports[1]}"]]
    procs = []
    for rank in (0, 1):
        config = {
            "rank": rank,
            "parties": parties,
            "link_id": f"bench-{protocol}",
            "protocol": protocol,
            "input": str(inputs[rank]),
            "output": str(folder / f"out-{protocol}-{rank}.csv"),
            "key_column": "id",
            "receiver_rank": 0,
            "broadcast": True,
            "bucket_size": 1 << 20,
            "checkpoint": "",
            "tls": None,
            "connect_timeout_ms": 60000,
            "recv_timeout_ms": TIMEOUT_S * 1000,
        }
        path = folder / f"spu-{protocol}-{rank}.json"
        path.write_text(json.dumps(config))
        procs.append(
            subprocess.Popen(
                [str(python), "-I", str(WORKER), str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=folder,  # spu writes its log and a marker where it runs
            )
        )
    results, rss = [], []
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        assert proc.stdout is not None
        out = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
        if os.waitstatus_to_exitcode(status) != 0 or "error" in out:
            raise SystemExit(f"spu {protocol} failed: {out}")
        results.append(out)
        rss.append(round(usage.ru_maxrss / 1024, 1))
        proc.returncode = os.waitstatus_to_exitcode(status)
    if any(r["intersection"] != intersection_size(n) for r in results):
        raise SystemExit(f"spu {protocol} found {results}, expected {intersection_size(n)}")
    seconds = max(r["seconds"] for r in results)
    print(f"spu {protocol}: {seconds:.1f} s", flush=True)
    return {"seconds": seconds, "peak_rss_mb": {"host": rss[0], "collaborator": rss[1]}}


def multiparty_figures(n: int) -> dict:
    """Three parties, the multi-party protocol against pairwise RR22 (bench.psi_multiparty),
    at PSI_MP_N ids per party (default N)."""
    return compare(int(os.environ.get("PSI_MP_N", str(n))))


def main() -> None:
    n = int(os.environ.get("PSI_N", str(1 << 20)))
    engine = os.environ.get("PSI_ENGINE", "spu-rr22")
    peers = os.environ.get("PSI_PEERS", "ecdh,rr22").split(",")
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    print(f"PSI benchmark: N={n} per party, {cores} cores, load {load_before}", flush=True)
    ours = run_ours(n, engine)
    spu = {}
    with tempfile.TemporaryDirectory(prefix="psi-bench-spu-") as tmp:
        folder = Path(tmp)
        if any(peers):
            write_csv(folder / "host.csv", host_ids(n))
            write_csv(folder / "collaborator.csv", collaborator_ids(n))
        for protocol in filter(None, peers):
            spu[protocol] = run_spu(n, protocol, folder)
    load_after = os.getloadavg()
    print(f"load after: {load_after}", flush=True)
    line = {
        "bench": "psi",
        "n": n,
        "engine": engine,
        "seconds": round(ours["seconds"], 2),
        "ids_per_s_per_core": round(2 * n / (ours["seconds"] * cores), 1),
        "peak_rss_mb": ours["peak_rss_mb"],
        "rss_bound_mb": ours["rss_bound_mb"],
    }
    for protocol, figures in spu.items():
        line[f"spu_{protocol}_seconds"] = round(figures["seconds"], 2)
        line[f"spu_{protocol}_peak_rss_mb"] = figures["peak_rss_mb"]
    line["spu_link"] = SPU_LINK
    if os.environ.get("PSI_MULTIPARTY", "1") != "0":
        line.update(multiparty_figures(n))
    line["load"] = [round(x, 2) for x in (*load_before[:1], *load_after[:1])]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
