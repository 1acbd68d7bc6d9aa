"""Linear algebra on packed CKKS ciphertexts with plaintext matrices, plus slot masking.

All products are plaintext x ciphertext with the plaintext at scale 2^30 (2^40 for δ), summed
and never rescaled: the result keeps the fresh ciphertext's two primes (120 bits) at scale
2^80 (2^90), which leaves 2^38 (2^28) of headroom for masks. Every result that
the other party will decrypt is masked in *every* slot, real and imaginary part, with fresh
uniform randomness (`add_mask`): rotation leftovers, padding and the imaginary parts (which
would otherwise carry CKKS noise that depends on the evaluator's plaintext) included.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tenseal import sealapi

from party_node.secure.context import PeerKeys
from party_node.secure.layout import BsgsPlan, Geometry


def secure_uniform(shape: tuple[int, ...] | int, bound: float) -> np.ndarray:
    """Uniform values in [-bound, bound) from the OS CSPRNG (53 random bits each)."""
    n = int(np.prod(shape))
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    unit = raw.astype(np.float64) * (1.0 / (1 << 53))
    return ((2.0 * unit - 1.0) * bound).reshape(shape)


def _bsgs(
    peer: PeerKeys,
    ct: Any,
    diagonals: dict[int, np.ndarray],
    plan: BsgsPlan,
    unit: int,
    scale: float,
) -> Any:
    """sum_k diag_k ⊙ rot(ct, k*unit) with ~2*sqrt(#k) rotations (baby-step giant-step)."""
    engine, ev = peer.engine, peer.engine.evaluator
    baby: dict[int, Any] = {}
    acc = None
    for g in range(plan.n2):
        inner = None
        for h in range(plan.n1):
            diag = diagonals.get(plan.k0 + g * plan.n1 + h)
            if diag is None:
                continue
            if h not in baby:
                baby[h] = peer.rotate(ct, (plan.k0 + h) * unit)
            shift = g * plan.n1 * unit
            pt = engine.encode(np.roll(diag, shift % peer.params.slots), scale, ct.parms_id())
            term = sealapi.Ciphertext()
            ev.multiply_plain(baby[h], pt, term)
            if inner is None:
                inner = term
            else:
                ev.add_inplace(inner, term)
        if inner is None:
            continue
        if g:
            inner = peer.rotate(inner, g * plan.n1 * unit)
        if acc is None:
            acc = inner
        else:
            ev.add_inplace(acc, inner)
    if acc is None:  # all-zero matrix: still return a ciphertext of the right shape
        acc = sealapi.Ciphertext()
        ev.multiply_plain(ct, engine.encode(np.zeros(peer.params.slots), scale), acc)
    return acc


def block_matmul(peer: PeerKeys, geo: Geometry, ct: Any, a: np.ndarray, plan: BsgsPlan) -> Any:
    """out block u = sum_t a[t, u] * in block t (blocks at stride geo.stride).

    `a` is encoded at the plaintext scale 2^plain_scale_bits (slot precision ~1e-8)."""
    t_in, t_out = a.shape
    diagonals: dict[int, np.ndarray] = {}
    for k in range(plan.k0, plan.k0 + plan.count):
        diag = None
        for u in range(t_out):
            t = u + k
            if 0 <= t < t_in:
                if diag is None:
                    diag = np.zeros(peer.params.slots)
                diag[u * geo.stride : u * geo.stride + geo.block_rows] = a[t, u]
        if diag is not None:
            diagonals[k] = diag
    return _bsgs(peer, ct, diagonals, plan, geo.stride, 2.0**peer.params.plain_scale_bits)


def block_gram(peer: PeerKeys, geo: Geometry, ct: Any, d: np.ndarray, n_blocks: int) -> Any:
    """Per block t, y with sum_r y[t*stride + j + r*wrap] = sum_b in_t[b] d[b, j].

    `d` is (block_rows x wrap). Hybrid diagonal method: y = sum_k E_k ⊙ rot(in, k) with
    E_k[b] = d[(b + k) mod block_rows, b mod wrap]; `gram_reduce` finishes the sum.
    """
    rows, w = geo.block_rows, geo.wrap
    b = np.arange(rows)
    diagonals: dict[int, np.ndarray] = {}
    for k in range(w):
        block = d[(b + k) % rows, b % w]
        if not block.any():
            continue
        diag = np.zeros(peer.params.slots)
        for t in range(n_blocks):
            diag[t * geo.stride : t * geo.stride + rows] = block
        diagonals[k] = diag
    return _bsgs(peer, ct, diagonals, geo.gram_plan(), 1, 2.0**peer.params.gram_scale_bits)


def gram_reduce(peer: PeerKeys, geo: Geometry, ct: Any) -> Any:
    """Fold each block's `block_rows` slots onto its first `wrap` slots (log2 rotations)."""
    for step in geo.gram_reduce_steps():
        peer.engine.evaluator.add_inplace(ct, peer.rotate(ct, step))
    return ct


def add_mask(
    peer: PeerKeys,
    ct: Any,
    bound: float,
    fixed: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Add a fresh complex mask to every slot; return its real parts (to remove later).

    `fixed` = (slot indices, values) sets the real part of those slots to given values (the
    structured weight-gradient mask M); every other real and every imaginary part is fresh
    uniform in [-bound, bound].
    """
    n = peer.params.slots
    mask = secure_uniform(n, bound) + 1j * secure_uniform(n, bound)
    if fixed is not None:
        idx, values = fixed
        mask.real[idx] = values
    pt = peer.engine.encode(mask, ct.scale, ct.parms_id())
    peer.engine.evaluator.add_plain_inplace(ct, pt)
    return mask.real.copy()
