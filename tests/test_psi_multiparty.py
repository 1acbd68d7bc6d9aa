"""The multi-party PSI: exactly the intersection of all sets, and the host cannot compute any
pairwise intersection from what it receives (unlike pairwise PSI, where it must)."""

from __future__ import annotations

import random

import pytest

from party_node.psi import x25519
from party_node.psi.frames import PsiError
from party_node.psi.multiparty import (
    MultipartyCollaborator,
    MultipartyHost,
    common_points,
    key_pair,
    shared_key,
    unwrap_shared_key,
    wrap_shared_key,
)
from party_node.psi.pool import PsiPool
from party_node.psi.protocol import CollaboratorPsi, HostPsi


def run_multiparty(host_ids: list[str], collab_ids: list[list[str]]):
    """The whole protocol, messages passed by hand as the host would relay them. Returns the
    final set, what each collaborator learned, every 32-byte point the host received from, or
    can compute with its key on, a collaborator's set (its whole view of them), its own ids'
    points (hashed, under a and under abt), and the tagged common points."""
    names = [f"c{i}" for i in range(len(collab_ids))]
    host = MultipartyHost(host_ids, names)
    # b: made by the key keeper, wrapped for each other collaborator, relayed by the host.
    b = shared_key()
    keys = {host.roles.keeper: b}
    for name in names[1:]:
        private, public = key_pair()
        relayed = wrap_shared_key(b, public, context=f"t/{name}".encode())
        keys[name] = unwrap_shared_key(relayed, private, context=f"t/{name}".encode())
    collabs = {
        name: MultipartyCollaborator(ids, keys[name], tagger=name == host.roles.tagger)
        for name, ids in zip(names, collab_ids, strict=True)
    }
    tagger = collabs[host.roles.tagger]
    sent_x = host.blinded_ids()
    host.accept_tagged_ids(tagger.tag_host_ids(sent_x))
    view: dict[str, set[bytes]] = {}
    lists = []
    for name, collab in collabs.items():
        received = collab.blinded_ids()
        lists.append(received)
        view[name] = set(x25519.split(received)) | set(
            x25519.split(x25519.blind(host._key, received))
        )
    view["common"] = set(x25519.split(common_points(lists)))
    common = host.common(lists)
    view["common"] |= set(x25519.split(common))
    tagged = tagger.tag_common(common)
    final = host.accept_tagged_common(tagged)
    keys_out = host.result_keys()
    learned = [collab.accept_result_keys(keys_out) for collab in collabs.values()]
    assert host._tagged is not None
    own = (
        set(x25519.split(x25519.hash_to_points(host_ids)))
        | set(x25519.split(sent_x))
        | set(x25519.split(host._tagged.points.tobytes()))
    )
    return final, learned, view, own, set(x25519.split(tagged))


def expected(host_ids, collab_ids):
    out = set(host_ids)
    for ids in collab_ids:
        out &= set(ids)
    return out


ODD = ["école", "e\u0301cole", "東京", "", " ", "a\u0000b", "\ud800", "a,b"]
CASES = {
    "two collaborators": (
        [f"id{i}" for i in range(60)],
        [[f"id{i}" for i in range(0, 90, 2)], [f"id{i}" for i in range(0, 90, 3)]],
    ),
    "three, with odd ids and duplicates": (
        [*ODD, "a", "a", *[f"h{i}" for i in range(30)]],
        [
            [*ODD, "a", *[f"h{i}" for i in range(10, 40)]],
            [*ODD[::2], "a", "a", "h12", "h13"],
            [*ODD, "a", "h13", "zzz"],
        ],
    ),
    "empty final": (["a", "b"], [["a"], ["b"]]),
    "a collaborator with no ids": (["a"], [["a"], []]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_multiparty_equals_set_intersection(case: str) -> None:
    host_ids, collab_ids = CASES[case]
    final, learned, *_ = run_multiparty(host_ids, collab_ids)
    want = expected(host_ids, collab_ids)
    assert final == want
    assert learned == [want] * len(collab_ids)


def test_random_sets() -> None:
    rng = random.Random(5)
    universe = [f"u{rng.getrandbits(40):x}" for _ in range(400)]
    host_ids = rng.sample(universe, 250)
    collab_ids = [rng.sample(universe, 300), rng.sample(universe, 280), rng.sample(universe, 320)]
    final, learned, *_ = run_multiparty(host_ids, collab_ids)
    want = expected(host_ids, collab_ids)
    assert len(want) > 0 and final == want and learned == [want] * 3


def test_host_cannot_compute_a_pairwise_intersection() -> None:
    host_ids = [f"id{i}" for i in range(40)]
    collab_ids = [[f"id{i}" for i in range(0, 60, 2)], [f"id{i}" for i in range(0, 60, 3)]]
    want = expected(host_ids, collab_ids)
    pairwise = [set(host_ids) & set(ids) for ids in collab_ids]
    assert all(p != want for p in pairwise)  # so hiding them means something here

    final, _, view, own, tagged = run_multiparty(host_ids, collab_ids)
    assert final == want
    # Nothing the host got from, or can compute with its key on, a collaborator's set equals
    # any point of its own ids (hashed, under a or under abt): matching finds nothing.
    for name in ("c0", "c1"):
        assert not view[name] & own, name
    assert not view["common"] & own
    # Its only link to its ids is the tagged common set, which matches the final ids only.
    assert len(tagged & own) == len(want)

    # Pairwise PSI, for contrast: the host computes each pairwise intersection.
    with PsiPool(0) as pool:
        for ids, pair in zip(collab_ids, pairwise, strict=True):
            host, collab = HostPsi(host_ids, pool), CollaboratorPsi(ids, pool)
            host.consume(collab.respond(host.blinded_frames()))
            assert host.matched_ids() == pair


def test_shared_key_does_not_open_for_another_context_or_altered() -> None:
    private, public = key_pair()
    blob = wrap_shared_key(b"k" * 32, public, b"t/c1")
    assert unwrap_shared_key(blob, private, b"t/c1") == b"k" * 32
    with pytest.raises(PsiError, match="altered"):
        unwrap_shared_key(blob, private, b"t/c2")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(PsiError, match="altered"):
        unwrap_shared_key(tampered, private, b"t/c1")


def test_x25519_blinding_commutes_on_curve_and_twist() -> None:
    points = x25519.hash_to_points([f"id{i}" for i in range(64)])
    a, b = x25519.new_key(), x25519.new_key()
    assert x25519.blind(a, x25519.blind(b, points)) == x25519.blind(b, x25519.blind(a, points))
