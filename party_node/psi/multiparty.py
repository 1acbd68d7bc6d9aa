"""PSI with several collaborators in which the host learns only the final intersection.

Pure protocol (no transport), on X25519 (`x25519.py`). H holds X and key a; the collaborators
share a key b (made by the aggregator A and sent to each other collaborator wrapped for its
own X25519 key, through H, which relays it unread); the tagger T also holds a key t.
A and T are two different collaborators (the first two, in the host's order).

1. H -> T   P(x)^a for H's ids in a random order;       T -> H  P(x)^abt, same order.
2. C -> H   P(y)^b for every collaborator's ids, each in a random order.
3. H -> A   P(y)^ab per collaborator, each list reshuffled; A intersects the lists.
4. A -> T   (through H) the common points, P(y)^ab for y in every Y;  T -> H  P(y)^abt.
5. H        final = the x whose P(x)^abt is among them; H -> C  16-byte keys of the final ids.

Who sees what (semi-honest, no collusion): H holds X under {a,b,t} and the collaborators'
sets under {b} and {a,b}, so it can relate no collaborator's set to X on its own: it learns
the final intersection, the set sizes, and the sizes (not the ids) of the intersections among
the collaborators' sets (their lists share key b). A sees every list under {a,b} without a,
so it learns the sizes of the collaborators' intersections only. T sees X under {a} and the
common points under {a,b}: it learns |X| and the final size. Every collaborator learns the
final intersection, which is a subset of its own ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from party_node.psi.engine_files import id_key
from party_node.psi.frames import PsiError
from party_node.psi.protocol import _random_permutation, prepare_ids
from party_node.psi.x25519 import POINT_BYTES, blind, hash_to_points, new_key, split

KEY_BYTES = 16
_WRAP_INFO = b"heteronn/v2/psi/multiparty/shared-key"


def _shuffled(points: list[bytes]) -> bytes:
    return b"".join(points[i] for i in _random_permutation(len(points)))


def _points(data: bytes, what: str) -> list[bytes]:
    if len(data) % POINT_BYTES:
        raise PsiError(f"{what}: {len(data)} bytes is not a whole number of 32-byte points")
    return split(data)


@dataclass(frozen=True)
class Roles:
    """Which collaborators aggregate and tag (two different ones)."""

    aggregator: str
    tagger: str

    @classmethod
    def of(cls, collaborators: Sequence[str]) -> Roles:
        if len(collaborators) < 2:
            raise ValueError("the multi-party protocol needs at least two collaborators")
        return cls(aggregator=collaborators[0], tagger=collaborators[1])


class MultipartyHost:
    """The host's side: it only ever matches its own ids against the tagged common points."""

    def __init__(self, ids: Iterable[str], collaborators: Sequence[str]) -> None:
        self.roles = Roles.of(collaborators)
        unique = prepare_ids(ids)
        self._ids = [unique[i] for i in _random_permutation(len(unique))]
        self._key = new_key()
        self._tagged: dict[bytes, int] | None = None
        self.final: set[str] | None = None

    def blinded_ids(self) -> bytes:
        """Step 1, to the tagger: P(x)^a in this party's random order."""
        return blind(self._key, hash_to_points(self._ids))

    def accept_tagged_ids(self, data: bytes) -> None:
        """Step 1's answer: P(x)^abt, in the order sent."""
        points = _points(data, "the tagger's answer")
        if len(points) != len(self._ids):
            raise PsiError(f"the tagger returned {len(points)} points for {len(self._ids)} sent")
        self._tagged = {point: index for index, point in enumerate(points)}

    def forward(self, data: bytes) -> bytes:
        """Step 3: a collaborator's P(y)^b as P(y)^ab, reshuffled, for the aggregator."""
        try:
            return _shuffled(split(blind(self._key, data)))
        except ValueError as exc:
            raise PsiError(f"a collaborator sent an invalid point: {exc}") from None

    def accept_tagged_common(self, data: bytes) -> set[str]:
        """Step 5: the final intersection, from the tagged common points."""
        if self._tagged is None:
            raise RuntimeError("accept_tagged_ids() first")
        found = {self._tagged.get(point) for point in _points(data, "the tagged common points")}
        found.discard(None)
        self.final = {self._ids[index] for index in found if index is not None}
        return self.final

    def result_keys(self) -> bytes:
        """Step 5, to every collaborator: the final ids' 16-byte keys."""
        if self.final is None:
            raise RuntimeError("accept_tagged_common() first")
        return b"".join(bytes.fromhex(id_key(item)) for item in sorted(self.final))


class MultipartyCollaborator:
    """A collaborator's side; `tagger` adds the tag key t."""

    def __init__(self, ids: Iterable[str], shared_key: bytes, tagger: bool = False) -> None:
        self._ids = prepare_ids(ids)
        self._shared = shared_key
        self._tag = new_key() if tagger else None

    def blinded_ids(self) -> bytes:
        """Step 2: P(y)^b in a random order."""
        return blind(self._shared, _shuffled(split(hash_to_points(self._ids))))

    def tag_host_ids(self, data: bytes) -> bytes:
        """Step 1 at the tagger: P(x)^a -> P(x)^abt, same order."""
        return blind(self._tag_key(), blind(self._shared, data))

    def tag_common(self, data: bytes) -> bytes:
        """Step 4 at the tagger: P(y)^ab -> P(y)^abt, reshuffled."""
        return _shuffled(split(blind(self._tag_key(), data)))

    @staticmethod
    def aggregate(lists: Sequence[bytes]) -> bytes:
        """Step 3 at the aggregator: the points in every collaborator's list, sorted."""
        if not lists:
            raise PsiError("the aggregator received no lists")
        common = set(_points(lists[0], "a forwarded list"))
        for data in lists[1:]:
            common &= set(_points(data, "a forwarded list"))
        return b"".join(sorted(common))

    def accept_result_keys(self, data: bytes) -> set[str]:
        if len(data) % KEY_BYTES:
            raise PsiError("the host's result keys are not whole 16-byte keys")
        wanted = {data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)}
        result = {item for item in self._ids if bytes.fromhex(id_key(item)) in wanted}
        if len(result) != len(wanted):
            raise PsiError(
                f"the host sent {len(wanted) - len(result)} result keys that are none of this "
                "party's ids"
            )
        return result

    def _tag_key(self) -> bytes:
        if self._tag is None:
            raise PsiError("this collaborator is not the tagger of the multi-party PSI")
        return self._tag


# ---- sharing b: the aggregator wraps it for each other collaborator, the host relays -------
def shared_key() -> bytes:
    return new_key()


def key_pair() -> tuple[X25519PrivateKey, bytes]:
    """A collaborator's fresh key to receive b with; the public half goes to the aggregator."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def _wrapping_key(secret: bytes, context: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_WRAP_INFO + context).derive(secret)


def wrap_shared_key(key: bytes, recipient: bytes, context: bytes) -> bytes:
    """b for one collaborator: ephemeral public key || nonce || AES-GCM(b), bound to
    `context` (task and recipient), so the relaying host reads nothing."""
    ephemeral = X25519PrivateKey.generate()
    secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    nonce = os.urandom(12)
    sealed = AESGCM(_wrapping_key(secret, context)).encrypt(nonce, key, context)
    return ephemeral.public_key().public_bytes_raw() + nonce + sealed


def unwrap_shared_key(blob: bytes, private: X25519PrivateKey, context: bytes) -> bytes:
    if len(blob) != 32 + 12 + 32 + 16:
        raise PsiError(f"the wrapped PSI key is {len(blob)} bytes, expected 92")
    secret = private.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
    try:
        return AESGCM(_wrapping_key(secret, context)).decrypt(blob[32:44], blob[44:], context)
    except Exception:  # cryptography's InvalidTag
        raise PsiError("the wrapped PSI key does not open: it was altered on the way") from None
