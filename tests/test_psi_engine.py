"""PSI through the engine (SecretFlow's spu as a worker process per party): exactly Python's
set intersection, over a real gRPC server and real worker processes; the engine's link
refuses any party but the one the Psi RPC named; mismatched engines fail with a message
that says which setting to change."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi.engine import EngineRun, LinkEnd, RunSpec, free_port
from party_node.psi.engine_files import EngineInput
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.engine_session import EngineCollaboratorSession
from party_node.psi.frames import PsiError
from wire.grpc_factory import open_channel, start_server

SERVICE = party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name
TIMEOUT = 60.0


def header(sender: str):
    return lambda: common_pb2.Header(task_id="t", sender=sender, kind="psi")


class Servicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    def __init__(self, sessions: dict[str, EngineCollaboratorSession]):
        self.sessions = sessions

    def Psi(self, request_iterator, context):
        name = dict(context.invocation_metadata()).get("to", "")
        return self.sessions[name].handle(request_iterator, context)


class _Route(grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds a `to` metadata entry so one test server can play several collaborators."""

    def __init__(self, name: str):
        self.name = name

    def _details(self, details):
        metadata = [*(details.metadata or []), ("to", self.name)]
        return details._replace(metadata=metadata)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def run_engine_psi(
    tmp_path: Path,
    host_ids: list[str],
    collab_ids: list[list[str]],
    engine: str = "spu-rr22",
    collab_engine: str | None = None,
    recover: bool = False,
) -> tuple[set[str], list[set[str]]]:
    """The host and every collaborator through one real gRPC server in this process; the
    engines run as real worker processes. Returns what each party learned."""
    sessions = {
        f"c{i}": EngineCollaboratorSession(
            ids,
            EngineOptions(
                engine=collab_engine or engine, folder=tmp_path / f"c{i}", recover=recover
            ),
            header(f"c{i}"),
            node_id=f"c{i}",
            timeout=TIMEOUT,
        )
        for i, ids in enumerate(collab_ids)
    }

    def register(server):
        party_node_pb2_grpc.add_PartyNodeServiceServicer_to_server(Servicer(sessions), server)
        return [SERVICE]

    server = start_server("127.0.0.1:0", register)
    channels = []
    try:
        stubs = {}
        for name in sessions:
            channel = grpc.intercept_channel(open_channel(f"127.0.0.1:{server.port}"), _Route(name))
            channels.append(channel)
            stubs[name] = party_node_pb2_grpc.PartyNodeServiceStub(channel)
        final = run_host_engine_psi(
            stubs,
            host_ids,
            header("h"),
            EngineOptions(engine=engine, folder=tmp_path / "h", recover=recover),
            TIMEOUT,
        )
        learned = [s.wait_result(TIMEOUT) for s in sessions.values()]
    finally:
        for session in sessions.values():
            session.close()
        for channel in channels:
            channel.close()
        server.stop(0)
    return final, learned


def expected(host_ids: list[str], collab_ids: list[list[str]]) -> set[str]:
    out = set(host_ids)
    for ids in collab_ids:
        out &= set(ids)
    return out


ODD_IDS = ["école", "e\u0301cole", "東京", "🧬", "", " ", "a\u0000b", "\ud800", "a,b", 'q"', "n\nl"]
CASES = {
    "edge ids and duplicates": (
        [*ODD_IDS, "a", "a", "b", *[f"h{i}" for i in range(50)]],
        [[*ODD_IDS[::2], "École", "a", "a", "z", *[f"h{i}" for i in range(25, 80)]]],
    ),
    "empty intersection": (["a", "b", "c"], [["d", "e"]]),
    "collaborator empty": (["a", "b"], [[]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_equals_set_intersection(case: str, tmp_path: Path) -> None:
    host_ids, collab_ids = CASES[case]
    final, learned = run_engine_psi(tmp_path, host_ids, collab_ids)
    want = expected(host_ids, collab_ids)
    assert final == want
    assert learned == [want]


def test_engine_random_sets_and_ecdh_protocol(tmp_path: Path) -> None:
    rng = random.Random(11)
    universe = [f"user-{rng.getrandbits(48):x}" for _ in range(6000)]
    host_ids = rng.sample(universe, 3000)
    collab_ids = [rng.sample(universe, 4000)]
    want = expected(host_ids, collab_ids)
    assert 0 < len(want) < 3000
    for engine in ("spu-rr22", "spu-ecdh"):
        final, learned = run_engine_psi(tmp_path / engine, host_ids, collab_ids, engine)
        assert final == want and learned == [want]


def test_two_collaborators_learn_only_the_final_intersection(tmp_path: Path) -> None:
    host_ids = [f"id{i}" for i in range(60)]
    collab_ids = [[f"id{i}" for i in range(0, 90, 2)], [f"id{i}" for i in range(0, 90, 3)]]
    final, learned = run_engine_psi(tmp_path, host_ids, collab_ids)
    want = expected(host_ids, collab_ids)
    assert final == want and learned == [want, want]
    # With two collaborators only the host receives each pairwise result from the engine.
    for name in ("c0", "c1"):
        assert not (tmp_path / name / "with-h" / "output.csv").exists()


def test_recover_after_a_finished_run_reuses_its_result(tmp_path: Path) -> None:
    """A task restarted with recover after PSI had finished (a crash in training): both
    ends reuse their kept results; no worker runs (spu's recovery of a finished run would
    append its result twice)."""
    host_ids, collab_ids = [f"i{i}" for i in range(300)], [[f"i{i}" for i in range(150, 450)]]
    first, _ = run_engine_psi(tmp_path, host_ids, collab_ids)
    worker_out = tmp_path / "h" / "with-c0" / "worker.out"
    before = worker_out.stat().st_mtime_ns
    again, learned = run_engine_psi(tmp_path, host_ids, collab_ids, recover=True)
    assert again == first == expected(host_ids, collab_ids) and learned == [first]
    assert worker_out.stat().st_mtime_ns == before


def test_engine_mismatch_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PsiError, match="runs PSI engine 'spu-ecdh', this party 'spu-rr22'"):
        run_engine_psi(tmp_path, ["a"], [["a"]], engine="spu-ecdh", collab_engine="spu-rr22")


def _run_pair(tmp_path: Path, collab_trusts: bytes | None) -> list:
    """A host and a collaborator worker; the collaborator trusts `collab_trusts` instead of
    the host's real certificate when given. Returns each end's result or error."""
    ends = []
    ports = [free_port(), free_port()]
    for rank, ids in enumerate((["a", "b"], ["b", "c"])):
        source = EngineInput.write(tmp_path / str(rank), ids)
        ends.append(EngineRun(tmp_path / str(rank) / "run", source, f"p{rank}", False))
    specs = []
    for rank in (0, 1):
        other = 1 - rank
        cert = ends[other].certificate
        if rank == 1 and collab_trusts is not None:
            cert = collab_trusts
        specs.append(
            RunSpec(
                "rr22",
                rank,
                "l",
                "h" if rank == 0 else "c",
                "c" if rank == 0 else "h",
                f"127.0.0.1:{ports[rank]}",
                LinkEnd(f"127.0.0.1:{ports[other]}", cert),
                connect_timeout=3.0,
                timeout=10.0,
            )
        )
    out: list = [None, None]

    def wait(rank: int) -> None:
        try:
            out[rank] = ends[rank].wait(20.0)
        except PsiError as exc:
            out[rank] = exc

    for rank in (0, 1):
        ends[rank].start(specs[rank])
    threads = [threading.Thread(target=wait, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for end in ends:
        end.close()
    return out


def test_engine_link_refuses_a_certificate_it_was_not_given(tmp_path: Path) -> None:
    intruder = EngineRun(
        tmp_path / "x", EngineInput.write(tmp_path / "xi", ["z"]), "intruder", False
    ).certificate
    results = _run_pair(tmp_path, collab_trusts=intruder)
    assert all(isinstance(r, PsiError) for r in results), results
    assert "TLS link was refused" in str(results[1]), results
    # and the same pair, trusting each other's real certificates, completes
    ok = _run_pair(tmp_path / "ok", collab_trusts=None)
    assert [r["intersection"] for r in ok] == [1, 1]


def _iter(messages: list) -> Iterator:
    yield from messages


_RESUME_FAILURE = (
    "import sys\nprint('{\"error\": \"duplicated read_cnt in result: 0\"}')\nsys.exit(1)\n"
)


def _failing_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resumed: bool, script: str = _RESUME_FAILURE
) -> EngineRun:
    """An engine run whose worker is a stand-in script: by default one that fails the way spu
    did when it could not continue a crashed attempt's buckets."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    worker = tmp_path / "worker.py"
    worker.write_text(script)
    monkeypatch.setattr("party_node.psi.engine._WORKER", worker)
    folder = tmp_path / "run"
    if resumed:
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "bucket_3").write_text("kept by the crashed attempt")
    source = EngineInput.write(tmp_path / "in", ["a", "b"])
    run = EngineRun(folder, source, "c1", recover=True)
    run.start(
        RunSpec("rr22", 1, "l", "c1", "h", f"127.0.0.1:{free_port()}",
                LinkEnd(f"127.0.0.1:{free_port()}", b""), connect_timeout=3.0, timeout=10.0)
    )
    return run


def test_a_resumed_run_that_fails_drops_its_checkpoint(tmp_path, monkeypatch) -> None:
    run = _failing_run(tmp_path, monkeypatch, resumed=True)
    with pytest.raises(PsiError) as failed:
        run.wait(20.0)
    assert "duplicated read_cnt" in str(failed.value)
    assert "restart every party with recover=True to run the PSI afresh" in str(failed.value)
    # Without this, every later recover continued the same buckets and failed the same way.
    assert not (tmp_path / "run" / "checkpoint").exists() and not run.finished
    # A fresh run that fails has no checkpoint to drop and says nothing of one.
    fresh = _failing_run(tmp_path / "fresh", monkeypatch, resumed=False)
    with pytest.raises(PsiError) as failed:
        fresh.wait(20.0)
    assert "afresh" not in str(failed.value)


def test_a_finished_run_survives_a_crash_in_the_links_teardown(tmp_path, monkeypatch) -> None:
    """spu once exited 255 ('SendThread error bad_weak_ptr') after its peer's end closed
    first; the worker had printed its result, so the run is finished, not failed."""
    finished = (
        "import os\nprint('{\"intersection\": 1, \"seconds\": 0.1}', flush=True)\n"
        "os._exit(255)\n"
    )
    run = _failing_run(tmp_path, monkeypatch, resumed=False, script=finished)
    assert run.wait(20.0)["intersection"] == 1
    # the same exit status before any result is still a failure that says so
    crashed = "import os\nos._exit(255)\n"
    early = _failing_run(tmp_path / "early", monkeypatch, resumed=False, script=crashed)
    with pytest.raises(PsiError, match="exit status 255"):
        early.wait(20.0)


_COUNTED_FAILURE = (
    "import json, sys\nconfig = json.load(open(sys.argv[1]))\n"
    "with open(config['input'] + '.runs', 'a') as runs:\n    runs.write('run\\n')\n"
    "print('{\"error\": \"duplicated read_cnt in result: 4\"}')\nsys.exit(1)\n"
)


@pytest.mark.parametrize("resumed", [True, False])
def test_a_failed_resumed_run_restarts_afresh_once(tmp_path, monkeypatch, resumed) -> None:
    """A stand-in for spu that always fails: a resumed run (checkpoints at both ends) is
    run once more afresh, both workers together, and that fresh run's failure ends the PSI
    naming spu's error; a run that did not resume is not retried."""
    worker = tmp_path / "worker.py"
    worker.write_text(_COUNTED_FAILURE)
    monkeypatch.setattr("party_node.psi.engine._WORKER", worker)
    for end in ("h/with-c0", "c0/with-h"):
        (tmp_path / end / "checkpoint").mkdir(parents=True)
        if resumed:
            (tmp_path / end / "checkpoint" / "checkpoint.json").write_text("{}")
    with pytest.raises(PsiError) as failed:
        run_engine_psi(tmp_path, ["a", "b"], [["b", "c"]], recover=True)
    assert "the PSI engine (spu) failed: duplicated read_cnt in result: 4" in str(failed.value)
    assert "afresh" not in str(failed.value)  # the last run was not a resumed one
    runs = 2 if resumed else 1
    for end in ("h", "c0"):
        assert (tmp_path / end / "input.csv.runs").read_text().count("run") == runs, end


def test_a_restart_the_collaborator_did_not_expect_is_refused(tmp_path: Path) -> None:
    """`PsiLink.restart` only after this party's recovered run failed: a host cannot make a
    collaborator run its engine twice otherwise."""
    session = EngineCollaboratorSession(
        ["a"], EngineOptions(engine="spu-rr22", folder=tmp_path), header("c"),
        node_id="c", timeout=TIMEOUT,
    )
    offer = party_node_pb2.PsiRequest(
        header=header("h")(),
        step=party_node_pb2.PSI_STEP_LINK_OFFER,
        total=1,
        link=party_node_pb2.PsiLink(
            engine="spu-rr22", address="127.0.0.1:1", certificate=session_certificate(tmp_path),
            link_id="l", bucket_size=16, restart=True,
        ),
    )
    with pytest.raises(PsiError, match="asked to restart a PSI engine run it may not restart"):
        list(session.handle(_iter([offer])))
    with pytest.raises(PsiError, match="PSI failed"):
        session.wait_result(1.0)


def session_certificate(tmp_path: Path) -> bytes:
    return EngineRun(
        tmp_path / "cert", EngineInput.write(tmp_path / "cert-in", ["z"]), "h", False
    ).certificate
