"""openmined-psi (P-256 ECDH-PSI, exact `Raw` data structure) on the benchmark's sets, run by
its own venv because it pins an older protobuf. Its server and client are separate processes
so both parties' first steps overlap, like ours. Prints one JSON line."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

import private_set_intersection.python as psi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.psi_sets import collaborator_ids, host_ids, intersection_size


def _server(conn, n: int) -> None:
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, n, collaborator_ids(n), psi.DataStructure.RAW)
    request = psi.Request()
    request.ParseFromString(conn.recv_bytes())
    # Only now send: both ends writing a large message at once would deadlock the pipe.
    conn.send_bytes(setup.SerializeToString())
    conn.send_bytes(server.ProcessRequest(request).SerializeToString())


def main() -> None:
    n = int(sys.argv[1])
    items = host_ids(n)
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=_server, args=(theirs, n))
    start = time.perf_counter()
    child.start()
    client = psi.client.CreateWithNewKey(True)
    ours.send_bytes(client.CreateRequest(items).SerializeToString())
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(ours.recv_bytes())
    response.ParseFromString(ours.recv_bytes())
    found = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - start
    child.join()
    if len(found) != intersection_size(n):
        raise SystemExit(
            f"openmined-psi found {len(found)} common ids, expected {intersection_size(n)}"
        )
    print(json.dumps({"peer": "openmined-psi", "n": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
