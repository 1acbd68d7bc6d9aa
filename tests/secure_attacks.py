"""Test helper: what a malicious party can build and measure.

`crafted_ciphertext` writes the audit's ciphertext (c0, c1) = (0, t) in SEAL's own
serialization (header, members, uncompressed data), exactly what a party that edits bytes
could send: it decrypts to t·s(ζ_j)/Δ in slot j, the key evaluated at the slot roots. In NTT
form the constant polynomial t is t at every evaluation point, so no NTT is needed.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from party_node.secure import seal_io


def _header(version: bytes, size: int) -> bytes:
    return struct.pack("<HB", 0xA15E, 16) + version + struct.pack("<BHQ", 0, 0, size)


def crafted_ciphertext(engine: Any, like: Any, t: int, scale: float) -> bytes:
    """(0, t) at `like`'s level with a chosen scale, as the bytes a malicious peer sends."""
    version = seal_io.save_bytes(like)[3:5]
    n, levels = like.poly_modulus_degree(), like.coeff_modulus_size()
    primes = [m.value() for m in engine.seal_context.key_context_data().parms().coeff_modulus()]
    c0 = np.zeros((levels, n), np.uint64)
    c1 = np.array([[t % q] * n for q in primes[:levels]], np.uint64)
    data = np.concatenate([c0.ravel(), c1.ravel()]).tobytes()
    dyn = struct.pack("<Q", len(data) // 8) + data
    dyn = _header(version, 16 + len(dyn)) + dyn
    members = struct.pack("<4Q", *like.parms_id()) + bytes([1])
    members += struct.pack("<QQQdQ", 2, n, levels, scale, 1) + dyn
    return _header(version, 16 + len(members)) + members


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """|Pearson correlation| of two flattened real arrays."""
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def slot_corr(readback: np.ndarray, key: np.ndarray) -> float:
    """The audit's read-out: slot j of what came back against the key's slot j, real and
    imaginary parts and their cross terms; the largest |correlation|."""
    pairs = [(readback.real, key.real), (readback.imag, key.imag)]
    pairs += [(readback.real, key.imag), (readback.imag, key.real)]
    return max(corr(a, b) for a, b in pairs if np.std(a) > 0 and np.std(b) > 0)
