"""Several collaborators: what hiding the pairwise intersections from the host costs, end to
end, side by side in one run. Three parties as processes over gRPC on 127.0.0.1 (host and
collaborators c0, c1, `bench.psi_party`), N ids each (env PSI_MP_N, default PSI_N, default
2^20): the host holds ids [0, N), c0 [N/2, 3N/2), c1 [3N/4, 7N/4), so N/4 are common.

- multiparty: psi_engine "multiparty" (the host learns only the final intersection);
- pairwise: the node's default engine, spu RR22, one run per collaborator with the host the
  only receiver, then the final keys to each (the host learns X ∩ Y_i for each i).

Wall seconds until every party has the result, and CPU seconds of every party's process and
engine workers together (`*_cpu_s`: what the machine's load changes least). `psi_bench` adds
these figures to its JSON line; alone this prints its own JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 7200
NAMES = ["c0", "c1"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))


def starts(n: int) -> list[int]:
    return [n // 2, n // 2 + n // 4]


def final_size(n: int) -> int:
    return n - starts(n)[-1]


PARTY = [sys.executable, "-m", "bench.psi_party"]


def start_collaborator(args: list[str], what: str) -> tuple[subprocess.Popen, str]:
    """A `bench.psi_party` collaborator process and the port it serves on."""
    proc = subprocess.Popen(
        [*PARTY, "collaborator", *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if line[:1] != ["PORT"]:
        proc.kill()
        raise SystemExit(f"{what} did not start: {line}")
    return proc, line[1]


def run_host(args: list[str], what: str) -> dict:
    """A `bench.psi_party` host process, to its end; its report."""
    host = subprocess.run(
        [*PARTY, "host", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if host.returncode != 0:
        raise SystemExit(f"{what} failed:\n{host.stderr[-3000:]}")
    return json.loads(host.stdout.strip().splitlines()[-1])


def run_three(n: int, engine: str) -> dict:
    """Host and two collaborators; seconds until every party knows the final intersection."""
    collabs, ports = [], []
    try:
        for name, start in zip(NAMES, starts(n), strict=True):
            args = [str(n), engine, name, str(start), ",".join(NAMES)]
            proc, port = start_collaborator(args, f"collaborator {name}")
            collabs.append(proc)
            ports.append(port)
        started = time.perf_counter()
        host_report = run_host(
            [str(n), engine, ",".join(ports)], f"heteronn's host ({engine}, 3 parties)"
        )
        reports = [json.loads(proc.stdout.readline()) for proc in collabs]  # type: ignore[union-attr]
        seconds = time.perf_counter() - started
        for proc in collabs:
            proc.wait(60)
    finally:
        for proc in collabs:
            if proc.poll() is None:
                proc.kill()
    found = [host_report["result"], *(r["result"] for r in reports)]
    if found != [final_size(n)] * 3:
        raise SystemExit(f"{engine}: parties found {found}, expected {final_size(n)} each")
    by_party = [host_report["cpu_s"], *(r["cpu_s"] for r in reports)]
    print(f"heteronn 3 parties ({engine}): {seconds:.1f} s, CPU s {by_party}", flush=True)
    peaks = [host_report["peak_rss_mb"], *(r["peak_rss_mb"] for r in reports)]
    cpu = host_report["cpu_s"] + sum(r["cpu_s"] for r in reports)
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mb": dict(zip(["host", *NAMES], peaks, strict=True)),
    }


def compare(n: int) -> dict:
    """The figures psi_bench adds to its line."""
    multi = run_three(n, "multiparty")
    pair = run_three(n, "spu-rr22")
    return {
        "multiparty_n": n,
        "multiparty_seconds": round(multi["seconds"], 2),
        "pairwise_seconds": round(pair["seconds"], 2),
        "multiparty_vs_pairwise": round(multi["seconds"] / pair["seconds"], 2),
        "multiparty_cpu_s": round(multi["cpu_s"], 1),
        "pairwise_cpu_s": round(pair["cpu_s"], 1),
        "multiparty_vs_pairwise_cpu": round(multi["cpu_s"] / pair["cpu_s"], 2),
        "multiparty_peak_rss_mb": multi["peak_rss_mb"],
    }


def main() -> None:
    n = int(os.environ.get("PSI_MP_N", os.environ.get("PSI_N", str(1 << 20))))
    load = os.getloadavg()[0]
    line = {"bench": "psi_multiparty", **compare(n)}
    line["load"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
