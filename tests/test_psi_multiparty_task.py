"""psi_engine = "multiparty" in a real task: host and two collaborators as processes over
gRPC, each holding different ids. Every party trains on exactly the intersection of all
three sets, and nothing the host received lets it compute a pairwise intersection: no point
a collaborator sent it, as received or after the host's own key, meets any point of the
host's ids, and the tagged common points meet them in exactly the final intersection.
A party with another psi_engine is refused at join, naming the setting."""

from __future__ import annotations

import json
import time
from pathlib import Path

from heteronn.v1 import party_node_pb2
from party_node.psi import x25519
from tests.harness import run_task, spawn
from tests.psi_multiparty_party import party_ids

NODES = ["h", "c1", "c2"]
STEP = party_node_pb2.PsiStep.Value


def _points(data: bytes) -> set[bytes]:
    return set(x25519.split(data))


def _env(engine: str):
    return {"HETERONN_NODE_PSI_ENGINE": engine}


def test_three_parties_learn_the_intersection_and_the_host_no_pairwise_one(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HETERONN_NODE_PSI_ENGINE", "multiparty")
    results = run_task(tmp_path, NODES, "mp-task", module="tests.psi_multiparty_party")
    assert all(r.code == 0 for r in results.values()), {
        n: r.stderr[-2000:] for n, r in results.items()
    }

    sets = {node: set(party_ids(node)) for node in NODES}
    final = sets["h"] & sets["c1"] & sets["c2"]
    pairwise = [sets["h"] & sets["c1"], sets["h"] & sets["c2"]]
    assert final and all(p != final for p in pairwise)  # hiding them means something here
    for node in NODES:
        got = json.loads((tmp_path / f"{node}.intersection.json").read_text())
        assert set(got) == final, node

    view = json.loads((tmp_path / "host-view.json").read_text())
    (key_hex,) = view["keys"]
    key = bytes.fromhex(key_hex)
    received: dict[int, bytes] = {}
    for message in view["received"]:
        assert message["sender"] in ("c1", "c2")
        received[message["step"]] = received.get(message["step"], b"") + bytes.fromhex(
            message["data"]
        )
    blinded = received[STEP("PSI_STEP_MP_BLINDED")]  # both collaborators' lists, under b
    tagged_ids = received[STEP("PSI_STEP_MP_TAGGED_IDS")]  # the host's own ids under a, b, t
    tagged_common = received[STEP("PSI_STEP_MP_TAGGED_COMMON")]
    assert len(blinded) // 32 == len(sets["c1"]) + len(sets["c2"])
    assert set(received) == {
        STEP(f"PSI_STEP_MP_{s}")
        for s in ("PUBLIC_KEY", "WRAPPED_KEYS", "BLINDED", "TAGGED_IDS", "TAGGED_COMMON")
    }

    host_ids = sorted(sets["h"])
    hashed = x25519.hash_to_points(host_ids)
    own = _points(hashed) | _points(x25519.blind(key, hashed)) | _points(tagged_ids)
    # (the common points the host sends the tagger are a subset of these lists, ^a)
    assert not _points(blinded) & own
    assert not _points(x25519.blind(key, blinded)) & own
    # No collaborator id's hash crossed in the clear either.
    others = x25519.hash_to_points(sorted(sets["c1"] | sets["c2"]))
    assert not _points(others) & set().union(*(_points(d) for d in received.values()))
    # The one link to its ids: the tagged common points, meeting them in the final ids only.
    assert len(_points(tagged_common) & _points(tagged_ids)) == len(final)


def test_a_party_with_another_psi_engine_is_refused_at_join(tmp_path: Path) -> None:
    procs = {
        node: spawn(
            tmp_path,
            node,
            NODES,
            "mp-mismatch",
            module="tests.psi_multiparty_party",
            env=_env("spu-rr22" if node == "c2" else "multiparty"),
        )
        for node in NODES
    }
    try:  # the party refused (whichever joined after the other setting) exits at once
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and all(p.poll() is None for p in procs.values()):
            time.sleep(0.1)
        refused = [p for p in procs.values() if p.poll() is not None]
        assert refused, "no party was refused within 120 s"
        message = refused[0].communicate()[1]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "disagree on 'psi_engine'" in message, message[-2000:]
    assert "has spu-rr22" in message and "has multiparty" in message
    assert "every party must use the same psi_engine" in message
