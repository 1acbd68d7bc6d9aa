"""The multi-party PSI over gRPC (collaborator sessions behind real servers on 127.0.0.1):
exact with two and three collaborators, and every collaborator refuses what the protocol does
not allow it, with a message naming the problem: steps of another role, out of order or
twice, a wrong list of collaborators, more common points than its own set, a wrong sender."""

from __future__ import annotations

import random
from collections.abc import Iterator

import grpc
import pytest

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi import x25519
from party_node.psi.frames import PsiError
from party_node.psi.multiparty import shared_key, wrap_shared_key
from party_node.psi.multiparty_rpc import PsiRequest, run_host_multiparty_psi, wrap_context
from party_node.psi.multiparty_session import MultipartyCollaboratorSession
from party_node.psi.rpc import PsiRpcError
from wire.grpc_factory import open_channel, start_server

SERVICE = party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name
TASK = "task-mp"
STEP = party_node_pb2.PsiStep.Value


class SessionServicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    """A collaborator node that implements only Psi; records what it sent the host."""

    def __init__(self, session: MultipartyCollaboratorSession):
        self.session = session
        self.sent: list[party_node_pb2.PsiResponse] = []

    def Psi(self, request_iterator, context):
        for message in self.session.handle(request_iterator, context):
            self.sent.append(message)
            yield message


def _header(sender: str):
    return lambda: common_pb2.Header(task_id=TASK, sender=sender, kind="psi")


def _from(sender: str):
    def check(header: common_pb2.Header) -> None:
        if header.task_id != TASK or header.sender != sender:
            raise PsiError(f"a PSI message from '{header.sender}', expected '{sender}'")

    return check


@pytest.fixture
def network() -> Iterator:
    """Start collaborator sessions behind servers; yields a function that starts them all."""
    started = []

    def start(sets: dict[str, list[str]], timeout: float = 60):
        nodes = {}
        for name, ids in sets.items():
            session = MultipartyCollaboratorSession(
                ids,
                _header(name),
                node_id=name,
                task_id=TASK,
                collaborators=list(sets),
                timeout=timeout,
                check_header=_from("host"),
            )
            servicer = SessionServicer(session)

            def register(server: grpc.Server, servicer=servicer) -> list[str]:
                party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(servicer, server)
                return [SERVICE]

            server = start_server("127.0.0.1:0", register)
            channel = open_channel(f"127.0.0.1:{server.port}")
            started.append((server, channel))
            nodes[name] = (party_node_pb2_grpc.PartyNodeServiceStub(channel), session, servicer)
        return nodes

    yield start
    for server, channel in started:
        channel.close()
        server.stop(0)


@pytest.mark.parametrize("count", [2, 3])
def test_exact_over_grpc(network, count: int) -> None:
    rng = random.Random(count)
    universe = [f"客户-{i}" for i in range(600)]
    host_ids = [*rng.sample(universe, 300), "dup", "dup"]
    sets = {f"c{i}": [*rng.sample(universe, 350 - 20 * i), "dup"] for i in range(count)}
    nodes = network(sets)
    sizes: dict[str, int] = {}
    final = run_host_multiparty_psi(
        {name: stub for name, (stub, _, _) in nodes.items()},
        host_ids,
        _header("host"),
        timeout=60,
        check_header=_from,
        peer_sizes=sizes,
    )
    want = set(host_ids).intersection(*map(set, sets.values()))
    assert final == want and "dup" in final
    assert sizes == {name: len(set(ids)) for name, ids in sets.items()}
    for _, session, _ in nodes.values():
        assert session.wait_result(timeout=5) == want


def _call(stub, *messages: PsiRequest) -> list[party_node_pb2.PsiResponse]:
    return list(stub.Psi(iter(messages), timeout=20))


def _hello(names: list[str]) -> PsiRequest:
    return PsiRequest(
        header=_header("host")(),
        step=STEP("PSI_STEP_MP_HELLO"),
        last=True,
        multiparty=party_node_pb2.PsiMultiparty(collaborators=names),
    )


def _refused(stub, session, match: str, *messages: PsiRequest) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _call(stub, *messages)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert match in err.value.details()
    with pytest.raises(PsiError, match="PSI failed"):
        session.wait_result(timeout=5)


def test_a_wrong_list_of_collaborators_is_refused(network) -> None:
    nodes = network({"c0": ["a"], "c1": ["a"]})
    stub, session, _ = nodes["c1"]
    _refused(stub, session, "this task's are ['c0', 'c1']", _hello(["c0", "mallory"]))


def test_a_step_of_another_role_is_refused(network) -> None:
    nodes = network({"c0": ["a"], "c1": ["a"]})
    stub, session, _ = nodes["c1"]  # the tagger
    assert len(_call(stub, _hello(["c0", "c1"]))[0].data) == 32
    wrap = PsiRequest(
        header=_header("host")(), step=STEP("PSI_STEP_MP_WRAP_KEYS"), data=bytes(32), last=True
    )
    _refused(
        stub,
        session,
        "MP_WRAP_KEYS, a step of the key keeper; this collaborator is the tagger",
        wrap,
    )


def test_steps_out_of_order_or_twice_are_refused(network) -> None:
    nodes = network({"c0": ["a"], "c1": ["a"]})
    stub, session, _ = nodes["c1"]  # the tagger
    common = PsiRequest(header=_header("host")(), step=STEP("PSI_STEP_MP_COMMON"), last=True)
    _refused(stub, session, "MP_COMMON before MP_HELLO (PSI is waiting)", common)
    stub, session, _ = network({"c0": ["a"], "c1": ["a"]})["c0"]  # the key keeper
    _call(stub, _hello(["c0", "c1"]))
    _refused(stub, session, "a second multi-party PSI for this task", _hello(["c0", "c1"]))
    stub, session, _ = network({"c0": ["a"], "c1": ["a"]})["c0"]
    _call(stub, _hello(["c0", "c1"]))
    wrong = "MP_COMMON, a step of the tagger; this collaborator is the key keeper"
    _refused(stub, session, wrong, common)


def test_more_common_points_than_the_taggers_set_are_refused(network) -> None:
    """The common points are in every collaborator's list, the tagger's too: more of them than
    it holds ids is a host's error or attack, refused before any work."""
    nodes = network({"c0": ["a"], "c1": ["a", "b"]})
    stub, session, _ = nodes["c1"]  # the tagger
    public = _call(stub, _hello(["c0", "c1"]))[0].data
    wrapped = wrap_shared_key(shared_key(), public, wrap_context(TASK, "c1"))
    key = PsiRequest(
        header=_header("host")(), step=STEP("PSI_STEP_MP_SHARED_KEY"), data=wrapped, last=True
    )
    assert sum(len(m.data) for m in _call(stub, key)) == 2 * 32
    host_ids = x25519.hash_to_points(["a"])
    ids = PsiRequest(
        header=_header("host")(),
        step=STEP("PSI_STEP_MP_HOST_IDS"),
        data=host_ids,
        total=1,
        last=True,
    )
    assert sum(len(m.data) for m in _call(stub, ids)) == 32
    big = PsiRequest(
        header=_header("host")(),
        step=STEP("PSI_STEP_MP_COMMON"),
        data=x25519.hash_to_points(["p", "q", "r"]),
        total=3,
        last=True,
    )
    _refused(
        stub,
        session,
        "announced 3 mp_common elements; at most 2 (they are common to every collaborator",
        big,
    )


def test_a_message_from_another_sender_is_refused(network) -> None:
    nodes = network({"c0": ["a"], "c1": ["a"]})
    stub, session, _ = nodes["c0"]
    forged = _hello(["c0", "c1"])
    forged.header.sender = "c1"
    _refused(stub, session, "a PSI message from 'c1', expected 'host'", forged)


def test_an_altered_shared_key_is_refused(network) -> None:
    nodes = network({"c0": ["a"], "c1": ["a"]})
    stub, session, _ = nodes["c1"]
    _call(stub, _hello(["c0", "c1"]))
    blob = PsiRequest(
        header=_header("host")(), step=STEP("PSI_STEP_MP_SHARED_KEY"), data=bytes(92), last=True
    )
    _refused(stub, session, "the wrapped PSI key does not open", blob)


def test_unreachable_collaborator_names_it() -> None:
    stubs = {
        name: party_node_pb2_grpc.PartyNodeServiceStub(open_channel("127.0.0.1:1"))
        for name in ("c0", "c1")
    }
    failed = r"multi-party hello with collaborator 'c[01]' failed: DEADLINE_EXCEEDED"
    with pytest.raises(PsiRpcError, match=failed):
        run_host_multiparty_psi(stubs, ["a"], _header("host"), timeout=1)
