"""PSI gives exactly Python's set intersection, leaks no id or unblinded hash on the wire,
and rejects a peer that breaks the protocol with a message naming what is wrong."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import grpc
import pytest

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi import protocol as psi_module
from party_node.psi.group import encode_id, hash_to_group
from party_node.psi.pool import PsiPool
from party_node.psi.protocol import (
    CollaboratorPsi,
    HostPsi,
    PsiError,
    PsiFrame,
    encode_indices,
    intersect_all,
)
from party_node.psi.rpc import (
    CollaboratorPsiSession,
    PsiCancelled,
    PsiRpcError,
    frame_from_proto,
    frame_to_proto,
    run_host_psi,
    serve_psi,
)
from wire.grpc_factory import open_channel, start_server

SERVICE = party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name
UNICODE_IDS = ["école", "e\u0301cole", "東京", "🧬🔬", "👩‍👩‍👧", "", " ", "a\u0000b", "\ud800", "Ω"]


@pytest.fixture(scope="module")
def pool() -> Iterator[PsiPool]:
    with PsiPool(2) as p:
        yield p


def run_in_process(
    host_ids: list[str], collab_ids: list[list[str]], pool: PsiPool, chunk: int = 7
) -> tuple[set[str], list[set[str]], list[list[PsiFrame]]]:
    """The whole protocol without transport; returns the final set, what each collaborator
    learned, and every frame that crossed (per collaborator)."""
    hosts, collabs, wires = [], [], []
    for ids in collab_ids:
        host = HostPsi(host_ids, pool, chunk_points=chunk)
        collab = CollaboratorPsi(ids, pool, chunk_points=chunk)
        seen: list[PsiFrame] = []

        def tap(frames, seen=seen):
            for frame in frames:
                seen.append(frame)
                yield frame

        host.consume(tap(collab.respond(tap(host.blinded_frames()))))
        hosts.append(host)
        collabs.append(collab)
        wires.append(seen)
    final = intersect_all(hosts)
    learned = []
    for host, collab, seen in zip(hosts, collabs, wires, strict=True):
        frames = list(host.result_frames(final))
        seen.extend(frames)
        learned.append(collab.accept_result(frames))
    return final, learned, wires


def expected(host_ids: list[str], collab_ids: list[list[str]]) -> set[str]:
    out = set(host_ids)
    for ids in collab_ids:
        out &= set(ids)
    return out


CASES = {
    "empty intersection": (["a", "b", "c"], [["d", "e"]]),
    "one common id": (["a", "b", "c"], [["x", "b", "y"]]),
    "duplicates": (["a", "a", "b", "c", "c", "c"], [["c", "c", "a", "z", "z"]]),
    "unicode": (UNICODE_IDS, [[*UNICODE_IDS[::2], "École", "東", "🧬"]]),
    "host empty": ([], [["a", "b"]]),
    "collaborator empty": (["a", "b"], [[]]),
    "both empty": ([], [[]]),
    "identical sets": ([str(i) for i in range(30)], [[str(i) for i in range(29, -1, -1)]]),
    "two collaborators": (
        [f"id{i}" for i in range(40)],
        [[f"id{i}" for i in range(0, 60, 2)], [f"id{i}" for i in range(0, 60, 3)]],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_in_process_equals_set_intersection(case: str, pool: PsiPool) -> None:
    host_ids, collab_ids = CASES[case]
    final, learned, _ = run_in_process(host_ids, collab_ids, pool)
    want = expected(host_ids, collab_ids)
    assert final == want
    assert learned == [want] * len(collab_ids)


@pytest.mark.parametrize("unit", [3, 4096])
def test_random_sets_match_python(pool: PsiPool, unit: int, monkeypatch) -> None:
    monkeypatch.setattr(psi_module, "UNIT_POINTS", unit)  # work units smaller than chunks
    rng = random.Random(7)
    universe = [f"user-{rng.getrandbits(40):x}" for _ in range(600)]
    host_ids = rng.sample(universe, 300) + rng.sample(universe, 20)
    collab_ids = [rng.sample(universe, 250), rng.sample(universe, 350)]
    final, learned, _ = run_in_process(host_ids, collab_ids, pool, chunk=64)
    want = expected(host_ids, collab_ids)
    assert 0 < len(want) < 250
    assert final == want and learned == [want, want]


def test_nothing_on_the_wire_reveals_an_id_or_its_hash(pool: PsiPool) -> None:
    host_ids = [f"host-secret-{i}" for i in range(50)] + ["shared-π", "shared-東京"]
    collab_ids = [f"collab-secret-{i}" for i in range(50)] + ["shared-π", "shared-東京"]
    final, _, wires = run_in_process(host_ids, [collab_ids], pool)
    assert final == {"shared-π", "shared-東京"}
    blob = b"".join(frame.data for frame in wires[0])
    assert len(wires[0]) > 10
    for item in host_ids + collab_ids:
        assert encode_id(item) not in blob
        assert hash_to_group(item) not in blob
    points = {
        f.data[i : i + 32]
        for f in wires[0]
        if f.step != "result_indices"
        for i in range(0, len(f.data), 32)
    }
    assert len(points) == 2 * 52 + 52  # P(x)^a, P(x)^ab for the host, P(y)^b: all distinct


def test_collaborator_order_is_shuffled(pool: PsiPool) -> None:
    ids = [str(i) for i in range(200)]
    orders = []
    for _ in range(2):
        collab = CollaboratorPsi(ids, pool)
        host = HostPsi(ids, pool)
        host.consume(collab.respond(host.blinded_frames()))
        frames = list(host.result_frames({"0", "1", "2"}))
        orders.append(frames[0].data)
        assert collab.accept_result(frames) == {"0", "1", "2"}
    assert orders[0] != orders[1]


def test_ids_must_be_strings(pool: PsiPool) -> None:
    with pytest.raises(TypeError, match=r"ids\[2\] is NoneType"):
        HostPsi(["a", "b", None], pool)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"ids\[0\] is bytes"):
        CollaboratorPsi([b"a"], pool)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single string"):
        HostPsi("abc", pool)


def _exchange_frames(pool: PsiPool) -> tuple[HostPsi, list[PsiFrame], list[PsiFrame]]:
    host = HostPsi(["a", "b", "c"], pool)
    collab = CollaboratorPsi(["b", "c", "d"], pool)
    blinded = list(host.blinded_frames())
    return host, blinded, list(collab.respond(blinded))


def test_host_rejects_malformed_collaborator_streams(pool: PsiPool) -> None:
    host, _, replies = _exchange_frames(pool)
    bad = PsiFrame("double_blinded", replies[0].data + b"x", replies[0].total, replies[0].last)
    with pytest.raises(PsiError, match="sent 97 bytes in a double_blinded chunk, not a multiple"):
        HostPsi(["a", "b", "c"], pool).consume([bad, *replies[1:]])
    with pytest.raises(PsiError, match="ended before the last peer_blinded chunk"):
        HostPsi(["a", "b", "c"], pool).consume(replies[:-1])
    with pytest.raises(PsiError, match="'peer_blinded' chunk where 'double_blinded'"):
        HostPsi(["a", "b", "c"], pool).consume(replies[-1:])
    short = PsiFrame("double_blinded", replies[0].data, 4, replies[0].last)
    with pytest.raises(PsiError, match="announced 4 double_blinded elements; expected 3"):
        HostPsi(["a", "b", "c"], pool).consume([short, *replies[1:]])
    peer = replies[-1]
    garbage = PsiFrame("peer_blinded", b"\xff" * 32 + peer.data[32:], peer.total, True)
    with pytest.raises(PsiError, match="element 0 of the chunk is not a valid ristretto255"):
        host.consume([*replies[:-1], garbage])


def test_collaborator_rejects_bad_result_indices(pool: PsiPool) -> None:
    collab = CollaboratorPsi(["a", "b"], pool)
    with pytest.raises(PsiError, match="result index 5, but this party sent only 2"):
        collab.accept_result([PsiFrame("result_indices", encode_indices([5]), 1, True)])
    with pytest.raises(PsiError, match="sent 3 bytes in a result_indices chunk"):
        collab.accept_result([PsiFrame("result_indices", b"\x00\x00\x00", 1, True)])
    with pytest.raises(PsiError, match="result index 1 twice"):
        collab.accept_result([PsiFrame("result_indices", encode_indices([1, 1]), 2, True)])


def test_frames_round_trip_through_proto() -> None:
    header = common_pb2.Header(task_id="t", sender="h", kind="psi")
    for step in ("blinded", "double_blinded", "peer_blinded", "result_indices"):
        frame = PsiFrame(step, b"\x01" * 64, 2, True)
        message = frame_to_proto(frame, header)
        assert message.header.task_id == "t"
        assert frame_from_proto(message) == frame
    with pytest.raises(PsiError, match="no valid step"):
        frame_from_proto(party_node_pb2.PsiRequest(data=b"x"))


def test_pool_runs_urgent_work_before_background_work() -> None:
    order: list[str] = []
    gate = threading.Event()
    with PsiPool(1) as one:
        one.submit(gate.wait, 5)  # keeps the only worker busy while both are queued
        later = one.submit(order.append, "own ids", background=True)
        first = one.submit(order.append, "peer chunk")
        gate.set()
        later.result(5)
        first.result(5)
    assert order == ["peer chunk", "own ids"]


@pytest.mark.parametrize("workers, kind", [(1, "processes"), (0, "threads")])
def test_other_pools_give_the_same_result(workers: int, kind) -> None:
    with PsiPool(workers, kind=kind) as other:
        final, learned, _ = run_in_process(["a", "b", "c"], [["c", "a", "q"]], other)
    assert final == {"a", "c"} and learned == [{"a", "c"}]


# --- over real gRPC ------------------------------------------------------------------------


class PsiOnlyServicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    """A collaborator node that implements only Psi, and records what crosses the wire."""

    def __init__(self, session: CollaboratorPsiSession):
        self.session = session
        self.wire: list[party_node_pb2.PsiRequest | party_node_pb2.PsiResponse] = []

    def Psi(self, request_iterator, context):
        def recorded(messages):
            for message in messages:
                self.wire.append(message)
                yield message

        for message in serve_psi(self.session, recorded(request_iterator), context):
            self.wire.append(message)
            yield message


def _header(sender: str):
    return lambda: common_pb2.Header(task_id="task-1", sender=sender, kind="psi")


@pytest.fixture
def collaborators(pool: PsiPool):
    """Start collaborator nodes on 127.0.0.1:0; yields a function that adds one."""
    started = []

    def start(
        ids: list[str], **session_args
    ) -> tuple[str, CollaboratorPsiSession, PsiOnlyServicer]:
        session = CollaboratorPsiSession(
            ids, pool, _header(f"c{len(started)}"), chunk_points=16, **session_args
        )
        servicer = PsiOnlyServicer(session)

        def register(server: grpc.Server) -> list[str]:
            party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
            return [SERVICE]

        server = start_server("127.0.0.1:0", register)
        channel = open_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel))
        return f"127.0.0.1:{server.port}", session, servicer

    yield start
    for server, channel in started:
        channel.close()
        server.stop(0)


def _stub(address: str) -> party_node_pb2_grpc.PartyNodeServiceStub:
    return party_node_pb2_grpc.PartyNodeServiceStub(open_channel(address))


def test_grpc_two_collaborators(pool: PsiPool, collaborators) -> None:
    rng = random.Random(3)
    universe = [f"客户-{i}" for i in range(400)]
    host_ids = [*rng.sample(universe, 150), "dup", "dup"]
    c_ids = [[*rng.sample(universe, 200), "dup"], [*rng.sample(universe, 180), "dup", "dup"]]
    nodes = [collaborators(ids) for ids in c_ids]
    stubs = {f"c{i}": _stub(addr) for i, (addr, _, _) in enumerate(nodes)}
    final = run_host_psi(stubs, host_ids, _header("host"), pool, timeout=30, chunk_points=16)
    want = expected(host_ids, c_ids)
    assert final == want and "dup" in final
    step = party_node_pb2.PSI_STEP_BLINDED
    blinded = [[m.data for m in s.wire if m.step == step] for _, _, s in nodes]
    assert blinded[0] == blinded[1]  # the host blinds its set once for all collaborators
    for _, session, servicer in nodes:
        assert session.wait_result(timeout=5) == want
        blob = b"".join(m.data for m in servicer.wire)
        assert servicer.wire and all(m.header.task_id == "task-1" for m in servicer.wire)
        for item in host_ids + c_ids[0] + c_ids[1]:
            assert encode_id(item) not in blob
            assert hash_to_group(item) not in blob


def test_grpc_empty_host_set(pool: PsiPool, collaborators) -> None:
    address, session, _ = collaborators(["a", "b"])
    final = run_host_psi({"c0": _stub(address)}, [], _header("host"), pool, timeout=10)
    assert final == set()
    assert session.wait_result(timeout=5) == set()


def test_grpc_rejected_header_fails_both_sides(pool: PsiPool, collaborators) -> None:
    def only_task_2(header: common_pb2.Header) -> None:
        if header.task_id != "task-2":
            raise PsiError(f"PSI message for task '{header.task_id}', this node runs 'task-2'")

    address, session, _ = collaborators(["a", "b"], check_header=only_task_2)
    with pytest.raises(PsiRpcError, match="INVALID_ARGUMENT: PSI message for task 'task-1'") as err:
        run_host_psi({"bank": _stub(address)}, ["a"], _header("host"), pool, timeout=10)
    assert err.value.peer == "collaborator 'bank'"
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(PsiError, match="PSI failed: PSI message for task 'task-1'"):
        session.wait_result(timeout=5)


def test_grpc_unreachable_collaborator_names_it(pool: PsiPool) -> None:
    with pytest.raises(PsiRpcError, match=r"collaborator 'gone'.*DEADLINE_EXCEEDED") as err:
        run_host_psi({"gone": _stub("127.0.0.1:1")}, ["a"], _header("host"), pool, timeout=1)
    assert "check that its node is running" in str(err.value)


class NotYetServicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    """A node whose PSI session opens only after a few calls (it is still joining)."""

    def __init__(self, session: CollaboratorPsiSession, refusals: int):
        self.session, self.refusals = session, refusals

    def Psi(self, request_iterator, context):
        if self.refusals > 0:
            self.refusals -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "not ready for PSI")
        return serve_psi(self.session, request_iterator, context)


def test_grpc_host_waits_for_a_collaborator_that_is_not_ready(pool: PsiPool) -> None:
    session = CollaboratorPsiSession(["a", "b", "c"], pool, _header("c0"))
    servicer = NotYetServicer(session, refusals=2)

    def register(server: grpc.Server) -> list[str]:
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
        return [SERVICE]

    server = start_server("127.0.0.1:0", register)
    try:
        stub = _stub(f"127.0.0.1:{server.port}")
        final = run_host_psi({"c0": stub}, ["c", "d", "a"], _header("host"), pool, timeout=10)
        assert final == {"a", "c"} and servicer.refusals == 0
        assert session.wait_result(timeout=5) == {"a", "c"}
    finally:
        server.stop(0)


def test_collaborator_wait_is_bounded_and_cancellable(pool: PsiPool) -> None:
    session = CollaboratorPsiSession(["a"], pool, _header("c"))
    with pytest.raises(TimeoutError, match=r"did not complete PSI within 0\.2 s"):
        session.wait_result(timeout=0.2)
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    with pytest.raises(PsiCancelled):
        session.wait_result(timeout=30, cancel=cancel)


class SilentServicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    """A collaborator that takes the call and never answers (hung peer)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Psi(self, request_iterator, context):
        self.release.wait(10)
        return iter(())


def test_host_psi_stops_on_cancel(pool: PsiPool) -> None:
    servicer = SilentServicer()

    def register(server: grpc.Server) -> list[str]:
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
        return [SERVICE]

    server = start_server("127.0.0.1:0", register)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    try:
        stub = _stub(f"127.0.0.1:{server.port}")
        with pytest.raises(PsiCancelled, match="task is stopping"):
            run_host_psi({"c0": stub}, ["a"], _header("host"), pool, timeout=30, cancel=cancel)
    finally:
        servicer.release.set()
        server.stop(0)
