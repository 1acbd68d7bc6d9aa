"""A collaborator that serves PSI through the engine in its own process, for tests that
kill it: `python -m tests.psi_engine_party FOLDER N BUCKET RECOVER`. Prints `PORT p`, then
`RESULT k` when it knows the intersection. Its ids: c-<i> for i in [N/2, 3N/2)."""

from __future__ import annotations

import sys
from pathlib import Path

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi.engine_rpc import EngineOptions
from party_node.psi.engine_session import EngineCollaboratorSession
from wire.grpc_factory import start_server


def ids(start: int, n: int) -> list[str]:
    return [f"c-{i}" for i in range(start, start + n)]


class Servicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    def __init__(self, session: EngineCollaboratorSession):
        self.session = session

    def Psi(self, request_iterator, context):
        return self.session.handle(request_iterator, context)


def main() -> None:
    folder, n, bucket, recover = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    options = EngineOptions(
        engine="spu-rr22", folder=folder, recover=recover == "1", bucket_size=bucket
    )
    session = EngineCollaboratorSession(
        ids(n // 2, n),
        options,
        lambda: common_pb2.Header(task_id="t", sender="c", kind="psi"),
        node_id="c",
        timeout=120.0,
    )

    def register(server):
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(Servicer(session), server)
        return [party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name]

    server = start_server("127.0.0.1:0", register)
    print(f"PORT {server.port}", flush=True)
    result = session.wait_result(120.0)
    print(f"RESULT {len(result)}", flush=True)
    server.stop(1.0)


if __name__ == "__main__":
    main()
