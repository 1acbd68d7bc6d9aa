"""PSI with several collaborators in which the host learns only the final intersection.

Pure protocol (no transport), on X25519 (`x25519.py`). H holds X and key a; the collaborators
share a key b (made by the key keeper K and sent to each other collaborator wrapped for its
own X25519 key, through H, which relays it unread); the tagger T also holds a key t.
K and T are two different collaborators (the first two, in the host's order).

1. C -> H   P(y)^b for every collaborator's ids, each list in a random order.
2. H -> T   P(x)^a for H's ids in a random order;       T -> H  P(x)^abt, same order.
3. H        the points in every list: P(y)^b for y in every Y (H cannot open them: no b);
   H -> T   those points ^a, in a random order;         T -> H  P(y)^abt, reshuffled.
4. H        final = the x whose P(x)^abt is among them; H -> C  16-byte keys of the final ids.

Who sees what (semi-honest, no collusion): H holds X under {a} and {a,b,t}, the
collaborators' sets under {b} and their common part under {a,b} and {a,b,t} (shuffled by T):
relating a collaborator's list to X needs b or t (DDH), so H learns the final intersection,
the set sizes, and the sizes (not the ids) of the intersections among the collaborators'
sets (their lists share b). T sees X under {a} and the collaborators' common part under
{a,b}, without a: it learns |X|, the size of that common part and the final size. Every
collaborator learns the final intersection, a subset of its own ids. Cost in X25519
multiplications: one per id of every party, two more per host id (at T), two per common
point (H and T). (An earlier version sent every list ^a to K to intersect: k more per
collaborator id, and K learnt the intersections' sizes; H intersecting the lists under b
itself needs neither.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from party_node.psi.engine_files import id_key
from party_node.psi.frames import PsiError
from party_node.psi.point_index import PointIndex, as_points
from party_node.psi.protocol import prepare_ids, random_order
from party_node.psi.result_keys import KEY_BYTES, keys_of
from party_node.psi.x25519 import blind, hash_to_points, new_key

_WRAP_INFO = b"heteronn/v2/psi/multiparty/shared-key"


def _points(data: bytes, what: str) -> np.ndarray:
    try:
        return as_points(data)
    except ValueError as exc:
        raise PsiError(f"{what}: {exc}") from None


def _shuffled(data: bytes) -> bytes:
    points = as_points(data)
    return points[random_order(len(points))].tobytes()


def _blind(key: bytes, data: bytes, what: str) -> bytes:
    try:
        return blind(key, data)
    except ValueError as exc:
        raise PsiError(f"{what} holds an invalid point: {exc}") from None


@dataclass(frozen=True)
class Roles:
    """Which collaborators make b (the key keeper) and tag (two different ones)."""

    keeper: str
    tagger: str

    @classmethod
    def of(cls, collaborators: Sequence[str]) -> Roles:
        if len(collaborators) < 2:
            raise ValueError("the multi-party protocol needs at least two collaborators")
        return cls(keeper=collaborators[0], tagger=collaborators[1])


def common_points(lists: Sequence[bytes]) -> bytes:
    """The points in every list (each a list of distinct points, as each collaborator's is):
    the smallest list is indexed, every other one looked up in it. In the smallest list's
    order, which the host cannot link to any id."""
    if not lists:
        raise PsiError("no collaborator's list to intersect")
    arrays = sorted((_points(data, "a collaborator's list") for data in lists), key=len)
    index = PointIndex(arrays[0])
    alive = np.ones(len(index), dtype=bool)
    for points in arrays[1:]:
        seen = np.zeros(len(index), dtype=bool)
        found = index.find(points)
        seen[found[found >= 0]] = True
        alive &= seen
    return index.points[alive].tobytes()


class MultipartyHost:
    """The host's side: it only ever matches its own ids against the tagged common points."""

    def __init__(self, ids: Iterable[str], collaborators: Sequence[str]) -> None:
        self.roles = Roles.of(collaborators)
        unique = prepare_ids(ids)
        self._ids = [unique[i] for i in random_order(len(unique)).tolist()]
        self._key = new_key()
        self._tagged: PointIndex | None = None
        self.final: set[str] | None = None

    @property
    def size(self) -> int:
        return len(self._ids)

    def blinded_ids(self) -> bytes:
        """Step 2, to the tagger: P(x)^a in this party's random order."""
        return blind(self._key, hash_to_points(self._ids))

    def accept_tagged_ids(self, data: bytes) -> None:
        """Step 2's answer: P(x)^abt, in the order sent."""
        points = _points(data, "the tagger's answer")
        if len(points) != len(self._ids):
            raise PsiError(f"the tagger returned {len(points)} points for {len(self._ids)} sent")
        self._tagged = PointIndex(points)

    def common(self, lists: Sequence[bytes]) -> bytes:
        """Step 3, to the tagger: the points in every collaborator's list P(y)^b, ^a,
        reshuffled."""
        return _shuffled(_blind(self._key, common_points(lists), "a collaborator's list"))

    def accept_tagged_common(self, data: bytes) -> set[str]:
        """Step 4: the final intersection, from the tagged common points."""
        if self._tagged is None:
            raise RuntimeError("accept_tagged_ids() first")
        found = self._tagged.find(_points(data, "the tagged common points"))
        self.final = {self._ids[index] for index in np.unique(found[found >= 0]).tolist()}
        return self.final

    def result_keys(self) -> bytes:
        """Step 4, to every collaborator: the final ids' 16-byte keys."""
        if self.final is None:
            raise RuntimeError("accept_tagged_common() first")
        return keys_of(self.final)


class MultipartyCollaborator:
    """A collaborator's side; `tagger` adds the tag key t. The shared key b may come later
    (`set_shared_key`): hashing the ids does not need it."""

    def __init__(
        self, ids: Iterable[str], shared_key: bytes | None = None, tagger: bool = False
    ) -> None:
        unique = prepare_ids(ids)
        self._ids = unique
        self._hashed = _shuffled(hash_to_points(unique))
        self._shared = shared_key
        self._tag = new_key() if tagger else None

    @property
    def size(self) -> int:
        return len(self._ids)

    def set_shared_key(self, key: bytes) -> None:
        self._shared = key

    def make_tagger(self) -> None:
        """This party tags (the host names its role once the ids are hashed)."""
        if self._tag is None:
            self._tag = new_key()

    def blinded_ids(self) -> bytes:
        """Step 1: P(y)^b in a random order."""
        return blind(self._shared_key(), self._hashed)

    def tag_host_ids(self, data: bytes) -> bytes:
        """Step 2 at the tagger: P(x)^a -> P(x)^abt, same order."""
        _points(data, "the host's blinded ids")
        once = _blind(self._shared_key(), data, "the host's blinded ids")
        return _blind(self._tag_key(), once, "the host's blinded ids")

    def tag_common(self, data: bytes) -> bytes:
        """Step 3 at the tagger: P(y)^ab -> P(y)^abt, reshuffled."""
        _points(data, "the common points")
        return _shuffled(_blind(self._tag_key(), data, "the common points"))

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

    def _shared_key(self) -> bytes:
        if self._shared is None:
            raise PsiError("the multi-party PSI's shared key has not arrived")
        return self._shared

    def _tag_key(self) -> bytes:
        if self._tag is None:
            raise PsiError("this collaborator is not the tagger of the multi-party PSI")
        return self._tag


# ---- sharing b: the key keeper wraps it for each other collaborator, the host relays -------
def shared_key() -> bytes:
    return new_key()


def key_pair() -> tuple[X25519PrivateKey, bytes]:
    """A collaborator's fresh key to receive b with; the public half goes to the key keeper."""
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
    try:
        secret = private.exchange(X25519PublicKey.from_public_bytes(blob[:32]))
        return AESGCM(_wrapping_key(secret, context)).decrypt(blob[32:44], blob[44:], context)
    except Exception:  # a low-order ephemeral key (ValueError), cryptography's InvalidTag
        raise PsiError("the wrapped PSI key does not open: it was altered on the way") from None
