"""How many bits each mask and flood keeps above what it hides, from the agreed bounds.

For docs, benchmarks and a check at start-up; nothing here changes the protocol. The flood on a
result must hide the part of the result's noise the key's owner could predict and that depends
on the other party's plaintext: the owner's own encryption noise e (it knows e: it holds the
secret key) times that plaintext. With the plaintext dithered (products.dithered), the encoder's
rounding no longer depends on the data, so that product is the only such term. Its slot-domain
std is ~σ·sqrt(N)/scale per unit of plaintext, summed over the terms of one output.
"""

from __future__ import annotations

import math

from party_node.secure.params import SecureParams
from party_node.secure.share_layer import Geometry
from party_node.secure.shares import init_bound, projection_init_bound

#: SEAL's noise standard deviation for fresh encryptions.
_SIGMA = 3.19


def margins(params: SecureParams, in_dim: int, out_dim: int, lr: float, momentum: float) -> dict:
    """Bits of hiding per mechanism (log2 of mask or flood over what it hides, at the bounds)."""
    p, geo = params, Geometry(in_dim, out_dim, params)
    noise = _SIGMA * math.sqrt(p.ckks.poly_modulus_degree)
    lam_d = p.lam * p.delta_bound
    rows = geo.gram.rows_per_group(p.block_rows)
    leak_z = math.sqrt(in_dim) * p.feature_bound * noise / p.share_scale
    leak_dx = math.sqrt(out_dim) * lam_d * noise / p.share_scale
    leak_g = math.sqrt(rows) * lam_d * noise / p.x_scale
    flood_g = p.g_noise / math.sqrt(geo.gram.groups)
    w = init_bound(in_dim)
    fresh = min(p.share_fresh * w, p.gradient_mask_cap(lr, momentum))
    gradient_mask = 2 * fresh * (1 + momentum) / lr
    gradient_bound = p.block_rows * p.feature_bound * p.delta_bound
    return {
        "flood_z": round(math.log2(p.z_noise / leak_z), 1),
        "flood_dx": round(math.log2(p.dx_noise / leak_dx), 1),
        "flood_weight_gradient": round(math.log2(flood_g / leak_g), 1),
        "partial_masks": round(p.partial_mask_bits(rows), 1),
        "share_offset_over_init": round(
            math.log2(p.share_offset * w / projection_init_bound(in_dim)), 1
        ),
        "gradient_mask_over_bound": round(math.log2(gradient_mask / gradient_bound), 1),
    }
