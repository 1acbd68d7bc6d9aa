"""X25519 as a PSI group (Intel's multi-buffer X25519, or OpenSSL's): hash to a u-coordinate,
blind.

P(id) = SHA-512(DOMAIN_TAG || utf-8(id))[:32] read as an X25519 u-coordinate (RFC 7748
masks the top bit). About half the ids land on the quadratic twist; that is sound because
Curve25519 is twist-secure (the twist has order 4 times a 253-bit prime), X25519 clamps every
scalar to a multiple of 8 (clearing the cofactors 8 and 4), and the Montgomery ladder
computes x([k]P) on the curve and the twist alike, so blinding commutes:
X25519(a, X25519(b, u)) = X25519(b, X25519(a, u)). Security rests on DDH in both prime-order
subgroups, with the hash a random oracle onto the x-coordinates. (Which of the two groups an
id lands in is public: anyone can hash it.) No curve arithmetic of ours.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from party_node.psi import x25519_mb

DOMAIN_TAG = b"heteronn/v2/psi/x25519/SHA-512/"
POINT_BYTES = 32


def new_key() -> bytes:
    """A fresh secret scalar (X25519 clamps it when used)."""
    return os.urandom(32)


def hash_to_points(ids: Iterable[str]) -> bytes:
    """P(id) for every id, concatenated (no secret involved)."""
    sha512 = hashlib.sha512
    return b"".join(
        sha512(DOMAIN_TAG + item.encode("utf-8", "surrogatepass")).digest()[:32] for item in ids
    )


def blind(key: bytes, points: bytes) -> bytes:
    """X25519(key, u) for every 32-byte u of `points`; ValueError names a bad element (a
    low-order point, whose result would be the identity). Intel's multi-buffer X25519 where
    this machine has it (`x25519_mb`), else OpenSSL's: the same function."""
    if x25519_mb.available():
        return x25519_mb.blind(key, points)
    return blind_openssl(key, points)


def blind_openssl(key: bytes, points: bytes) -> bytes:
    """`blind` through OpenSSL (`cryptography`), one point at a time."""
    private = X25519PrivateKey.from_private_bytes(key)
    exchange = private.exchange
    load = X25519PublicKey.from_public_bytes
    out = []
    for start in range(0, len(points) - len(points) % POINT_BYTES, POINT_BYTES):
        try:
            out.append(exchange(load(points[start : start + POINT_BYTES])))
        except ValueError:
            raise ValueError(
                f"element {start // POINT_BYTES} is a low-order X25519 point"
            ) from None
    return b"".join(out)


def split(data: bytes) -> list[bytes]:
    return [data[i : i + POINT_BYTES] for i in range(0, len(data), POINT_BYTES)]
