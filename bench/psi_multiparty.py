"""Several collaborators: what hiding the pairwise intersections from the host costs, side
by side in one run. N = env PSI_MP_N ids per party (default 2^15), two collaborators, the
sets of `bench.psi_sets` (the second collaborator's shifted by N/4).

- multiparty: `party_node.psi.multiparty` (X25519 through OpenSSL), every party's work in
  this process, one after another: its CPU seconds are the protocol's whole cost;
- pairwise through the engine: one spu RR22 run per collaborator (the default today, in
  which the host learns each pairwise intersection), workers as processes;
- pairwise in-process ECDH (ristretto255), the protocol the multi-party one replaces.

Each figure is CPU seconds of all parties together (load-independent); the last stdout line
is one JSON object."""

from __future__ import annotations

import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from bench.psi_sets import IdRange
from party_node.psi.engine import EngineRun, LinkEnd, RunSpec, free_port
from party_node.psi.engine_files import EngineInput
from party_node.psi.multiparty import MultipartyCollaborator, MultipartyHost, shared_key
from party_node.psi.pool import PsiPool
from party_node.psi.protocol import CollaboratorPsi, HostPsi


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measured(fn) -> tuple[float, float, object]:
    cpu, wall = cpu_s(), time.perf_counter()
    out = fn()
    return cpu_s() - cpu, time.perf_counter() - wall, out


def multiparty(host_ids, collab_ids) -> set[str]:
    host = MultipartyHost(host_ids, ["c0", "c1"])
    b = shared_key()
    collabs = [MultipartyCollaborator(ids, b, tagger=i == 1) for i, ids in enumerate(collab_ids)]
    host.accept_tagged_ids(collabs[1].tag_host_ids(host.blinded_ids()))
    forwarded = [host.forward(c.blinded_ids()) for c in collabs]
    common = MultipartyCollaborator.aggregate(forwarded)
    return host.accept_tagged_common(collabs[1].tag_common(common))


def pairwise_engine(host_ids, collab_ids, folder: Path) -> set[str]:
    source = EngineInput.write(folder / "h", host_ids)
    final: set[int] | None = None
    for i, ids in enumerate(collab_ids):
        mine = EngineRun(folder / f"h-{i}", source, "h", False)
        theirs = EngineRun(folder / f"c-{i}", EngineInput.write(folder / f"c{i}", ids), "c", False)
        ports = [free_port(), free_port()]
        ends = [(mine, theirs, 0), (theirs, mine, 1)]
        for run, other, rank in ends:
            run.start(
                RunSpec(
                    "rr22",
                    rank,
                    f"mp-{i}",
                    "h" if rank == 0 else "c",
                    "c" if rank == 0 else "h",
                    f"127.0.0.1:{ports[rank]}",
                    LinkEnd(f"127.0.0.1:{ports[1 - rank]}", other.certificate),
                    broadcast=False,
                )
            )
        waiter = threading.Thread(target=theirs.wait, args=(3600.0,))
        waiter.start()
        mine.wait(3600.0)
        waiter.join()
        rows = set(mine.rows().tolist())
        final = rows if final is None else final & rows
    return {host_ids[r] for r in final or set()}


def pairwise_ecdh(host_ids, collab_ids) -> set[str]:
    with PsiPool() as pool:
        hosts = []
        for ids in collab_ids:
            host, collab = HostPsi(list(host_ids), pool), CollaboratorPsi(list(ids), pool)
            host.consume(collab.respond(host.blinded_frames()))
            hosts.append(host)
    final = hosts[0].matched_ids()
    for host in hosts[1:]:
        final &= host.matched_ids()
    return final


def main() -> None:
    n = int(os.environ.get("PSI_MP_N", str(1 << 15)))
    host_ids = IdRange(0, n)
    collab_ids = [IdRange(n // 2, n), IdRange(n // 4 + n // 2, n)]
    want = set(host_ids) & set(collab_ids[0]) & set(collab_ids[1])
    load = os.getloadavg()[0]
    figures = {}
    with tempfile.TemporaryDirectory(prefix="psi-mp-") as tmp:
        runs = {
            "multiparty": lambda: multiparty(host_ids, collab_ids),
            "pairwise_engine": lambda: pairwise_engine(host_ids, collab_ids, Path(tmp)),
            "pairwise_ecdh": lambda: pairwise_ecdh(host_ids, collab_ids),
        }
        for name, run in runs.items():
            cpu, wall, final = measured(run)
            if final != want:
                raise SystemExit(f"{name}: {len(final)} common ids, expected {len(want)}")
            figures[name] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
            print(f"{name}: {cpu:.1f} CPU s, {wall:.1f} s", flush=True)
    line = {
        "bench": "psi_multiparty",
        "n": n,
        "collaborators": 2,
        **{f"{k}_cpu_s": v["cpu_s"] for k, v in figures.items()},
        **{f"{k}_wall_s": v["wall_s"] for k, v in figures.items()},
        "multiparty_vs_pairwise_engine": round(
            figures["multiparty"]["cpu_s"] / figures["pairwise_engine"]["cpu_s"], 2
        ),
        "multiparty_vs_pairwise_ecdh": round(
            figures["multiparty"]["cpu_s"] / figures["pairwise_ecdh"]["cpu_s"], 2
        ),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
