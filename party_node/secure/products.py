"""Products of our plaintexts with a peer's ciphertexts, and the finish every result gets
before it goes back to the key's owner.

All products are plaintext x ciphertext at two data primes, never rescaled until the finish:
    finish = + Gaussian flood (every slot, real and imaginary, fixed absolute width)
             + a fresh public-key encryption of zero under the owner's key (re-randomises the
               second component, which would otherwise be a known combination of the owner's
               own ciphertexts and our plaintexts)
             then rescale to one prime (half the bytes) and serialize.
The owner therefore decrypts values whose low-order noise does not depend on our operands
beyond what the flood hides, and never receives anything it produced itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tenseal import sealapi

from party_node.secure import seal_io
from party_node.secure.context import PeerKeys
from party_node.secure.plans import DiagPlan, GramPlan
from party_node.secure.shares import secure_normal, secure_uniform


def add_plain(peer: PeerKeys, ct: Any, values: np.ndarray, scale: float) -> Any:
    """ct += values (slot vector) encoded at `scale` and ct's level."""
    peer.engine.evaluator.add_plain_inplace(ct, peer.engine.encode(values, scale, ct.parms_id()))
    return ct


def add_plain_in_parts(peer: PeerKeys, ct: Any, values: np.ndarray, limit: float) -> Any:
    """ct += values, encoded in k equal parts of at most `limit` each: the encoder refuses a
    plaintext beyond the modulus, but the sum is taken mod q, so only the final value (here
    a product's small total) must fit."""
    parts = max(1, math.ceil(float(np.abs(values).max(initial=0.0)) / limit))
    pt = peer.engine.encode(values / parts, ct.scale, ct.parms_id())
    for _ in range(parts):
        peer.engine.evaluator.add_plain_inplace(ct, pt)
    return ct


def _accumulate(peer: PeerKeys, acc: Any, term: Any) -> Any:
    if acc is None or term is None:
        return term if acc is None else acc
    peer.engine.evaluator.add_inplace(acc, term)
    return acc


def dithered(vec: np.ndarray, where: np.ndarray, width: float) -> np.ndarray:
    """vec plus uniform noise of ±width on the slots in `where` (real and imaginary part)."""
    n = int(where.sum())
    out = vec.astype(np.complex128)
    out[where] += secure_uniform(n, width) + 1j * secure_uniform(n, width)
    return out


def diag_products(
    peer: PeerKeys,
    plan: DiagPlan,
    baby: dict[tuple[int, int], Any],
    a_mat: np.ndarray,
    scale: float,
    dither: float,
) -> list[Any]:
    """A·B for every chunk of A's rows, folded. `baby[(tile, h)]` is B's tile rotated by a·h
    (the owner's encryption of it, both shares added in); A's diagonals are dithered."""
    ev = peer.engine.evaluator
    used = plan.output_slots()
    results = []
    for chunk in range(plan.chunks(a_mat.shape[0])):
        diagonals = [
            [dithered(d, used, dither) for d in plan.diagonals(a_mat, chunk, tile)]
            for tile in range(plan.tiles)
        ]
        acc = None
        for gs in range(plan.n2):
            acc = _accumulate(peer, acc, _giant_step(peer, plan, baby, diagonals, scale, gs))
        for step in plan.fold_steps():
            ev.add_inplace(acc, peer.rotate(acc, step))
        results.append(acc)
    return results


def _giant_step(
    peer: PeerKeys,
    plan: DiagPlan,
    baby: dict[tuple[int, int], Any],
    diagonals: list[list[np.ndarray]],
    scale: float,
    gs: int,
) -> Any:
    """Σ over the baby steps of giant step gs of diagonal ⊙ baby copy, rotated into place."""
    shift = plan.a * plan.n1 * gs
    inner = None
    for tile in range(plan.tiles):
        for h in range(plan.n1):
            r = plan.n1 * gs + h
            if r >= plan.d:
                continue
            diag = np.roll(diagonals[tile][r], shift % plan.slots)
            pt = peer.engine.encode(diag, scale, baby[(tile, h)].parms_id())
            term = sealapi.Ciphertext()
            peer.engine.evaluator.multiply_plain(baby[(tile, h)], pt, term)
            inner = _accumulate(peer, inner, term)
    return peer.rotate(inner, shift) if gs and inner is not None else inner


def gram_product(
    peer: PeerKeys,
    plan: GramPlan,
    x_cts: list[Any],
    delta: np.ndarray,
    jp: int,
    scale: float,
    dither: float,
) -> Any:
    """Σ_k X-ciphertext_k ⊙ λδ-plaintext_k (dithered) for one (t-part, j-part): each group one
    row's products (the owner sums the groups)."""
    ev, acc = peer.engine.evaluator, None
    used = np.zeros(plan.slots, dtype=bool)
    used[: plan.groups * plan.group] = True
    for k, ct in enumerate(x_cts):
        vec = plan.pack_delta(delta, k, jp)
        vec[used] += secure_uniform(int(used.sum()), dither)
        pt = peer.engine.encode(vec, scale, ct.parms_id())
        term = sealapi.Ciphertext()
        ev.multiply_plain(ct, pt, term)
        acc = _accumulate(peer, acc, term)
    return acc


def zero_sum_masks(plan: GramPlan, bound: float) -> np.ndarray:
    """Masks for every group of one result, summing to zero over the groups in every slot
    (real and imaginary): m_g = r_g - r_{g+1}, r uniform in ±bound (so |m_g| <= 2·bound)."""
    shape = (plan.groups, plan.group)
    r = secure_uniform(shape, bound) + 1j * secure_uniform(shape, bound)
    masks = r - np.roll(r, -1, axis=0)
    vec = np.zeros(plan.slots, dtype=np.complex128)
    vec[: masks.size] = masks.ravel()
    return vec


def gaussian_slots(n: int, std: float) -> np.ndarray:
    """Complex Gaussian flood for n slots (real and imaginary parts of std `std`)."""
    return secure_normal(n, std) + 1j * secure_normal(n, std)


def finish(peer: PeerKeys, ct: Any, noise: Any) -> bytes:
    """Add the finishing noise (flood + re-randomisation, see background.NoisePool), rescale
    to one prime, serialize."""
    return seal_io.save_bytes(flood_and_rescale(peer, ct, noise))


def flood_and_rescale(peer: PeerKeys, ct: Any, noise: Any) -> Any:
    """`finish` without the serialization (a plaintext part may still be added after)."""
    peer.engine.evaluator.add_inplace(ct, noise)
    peer.engine.evaluator.rescale_to_next_inplace(ct)
    return ct
