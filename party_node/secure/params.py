"""Protocol constants every party must share, and the message vocabulary of one batch.

Widths come from bounds, not from the learning rate (docs/secure-protocol.md, "Parameters"):
- `feature_bound` F bounds |X| (checked by the collaborator on its own features) and
  `delta_bound` D bounds |δ| (checked by the host); λ = 2^delta_scale_bits scales δ up before
  it meets a ciphertext.
- The masks that hide partial sums of the weight gradient are 2^mask_bits times the bound of
  what they hide (rows per group × F × λD).
- Every result ciphertext sent to the key's owner is flooded with Gaussian noise of a fixed
  absolute width per product (the precision each value needs), 2^17 or more times the bound of
  the computation noise it hides (`flood_margin_bits`), then re-randomised.
- The shares are re-shared with offsets proportional to the layer's initialisation bound
  w = 1/sqrt(in_dim): the collaborator's initial offset (`share_offset`·w), the host's fresh
  per-step part (`share_fresh`·w) and its slow part (`share_slow`·w, AR(1) with
  `share_slow_rho`), so that neither share estimates W over a task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from party_node.secure.context import CkksParams

Message = dict[str, "torch.Tensor | bytes"]

#: Once per task, each direction: the sender's public context and Galois keys (the host's also
#: carries the layer shape and whether the shares start fresh).
KIND_PUBLIC_KEYS = "secure.public_keys"
#: Fresh tasks only: H -> C Enc_H(a); C -> H Enc_H(a ⊙ b - V0) (W0 = a ⊙ b, nobody knows it).
KIND_INIT_SHARE = "secure.init_share"
#: H -> C Enc_H(U) after the key exchange (later ones ride on secure.bwd_grad).
KIND_SHARE = "secure.share"
#: Per training batch, in order (the collaborator may take a batch's bwd_weight only after
#: it began the next batch's product on the Enc_H(U) that came with bwd_grad).
KIND_FWD = "secure.fwd"  # C -> H  Enc_H(X·W) (computed by C), Enc_C(Vᵀ)
KIND_ENC_X = "secure.enc_x"  # C -> H  Enc_C(X), for the weight gradient
KIND_BWD_GRAD = "secure.bwd_grad"  # H -> C  Enc_C(λδ·Wᵀ) (computed by H), next Enc_H(U)
KIND_BWD_WEIGHT = "secure.bwd_weight"  # H -> C  Enc_C(λ(Xᵀδ + M))
#: Test: every test row in one message, forward only.
KIND_TEST_FWD = "secure.test_fwd"


@dataclass(frozen=True)
class SecureParams:
    """Everything both parties must agree on besides the layer's shape and learning rate."""

    ckks: CkksParams = field(default_factory=CkksParams)
    #: Rows of one packed chunk (a batch of up to this many rows is one product ciphertext).
    block_rows: int = 128
    #: |X| and |δ| bounds (scheduler settings project_layer_feature_bound / _delta_bound).
    feature_bound: float = 64.0
    delta_bound: float = 0.125
    delta_scale_bits: int = 10
    mask_bits: int = 14
    #: X·W and λδ·Wᵀ: scale of the owner's share ciphertexts and of the other party's
    #: plaintext operand (rebalanced so that the owner's own noise, the term the flood must
    #: hide, is small next to the operand's; see `margins`).
    share_scale_bits: int = 56
    operand_scale_bits: int = 48
    #: Weight gradient: scale of the collaborator's X ciphertexts and of the host's λδ.
    x_scale_bits: int = 52
    gram_scale_bits: int = 36
    #: The computing party dithers its plaintext operand by ±2^dither_bits encoding units, so
    #: the encoder's rounding (a function of its data) is random noise to the key's owner.
    dither_bits: int = 12
    #: Gaussian flood std on z, on ∂L/∂X and on the weight gradient (absolute, unscaled).
    z_noise_bits: int = 20
    dx_noise_bits: int = 27
    g_noise_bits: int = 24
    share_offset: float = 64.0
    share_fresh: float = 256.0
    share_slow: float = 64.0
    share_slow_rho: float = 0.999
    #: Largest |z| and |λ·∂L/∂X| the product ciphertexts carry (also a sanity check).
    output_limit: float = 2.0**13
    #: Largest |value| the weight-gradient ciphertext carries, masks included.
    gram_limit: float = 2.0**30

    def __post_init__(self) -> None:
        if self.block_rows < 2 or self.block_rows % 2:
            raise ValueError("block_rows must be an even number >= 2")
        q = self.ckks.data_bits - 1
        product = self.share_scale_bits + self.operand_scale_bits
        if product + math.log2(self.output_limit) + 1 > q:
            raise ValueError("share scales leave no room for the outputs; lower share_scale_bits")
        if self.x_scale_bits + self.gram_scale_bits + math.log2(self.gram_limit) + 1 > q:
            raise ValueError("weight-gradient scales exceed the modulus; lower gram_scale_bits")
        rescaled = self.x_scale_bits + self.gram_scale_bits - self.ckks.coeff_mod_bit_sizes[1]
        if rescaled + math.log2(self.gram_limit) + 1 > self.ckks.coeff_mod_bit_sizes[0]:
            raise ValueError("the rescaled weight gradient does not fit one prime")
        if self.mask_bits < 8:
            raise ValueError("mask_bits below 8 would hide almost nothing")
        if not (self.feature_bound > 0 and self.delta_bound > 0):
            raise ValueError("feature_bound and delta_bound must be > 0")
        if self.partial_mask_bits(2) < 8:
            raise ValueError(
                "project_layer_feature_bound x project_layer_delta_bound is too large for the "
                "weight-gradient masks; lower one of them"
            )

    # ---- derived widths ---------------------------------------------------------------------
    @property
    def lam(self) -> float:
        """λ: δ is multiplied by it before it meets a ciphertext, and divided out after."""
        return float(2**self.delta_scale_bits)

    @property
    def share_scale(self) -> float:
        return float(2**self.share_scale_bits)

    @property
    def operand_scale(self) -> float:
        return float(2**self.operand_scale_bits)

    @property
    def product_scale(self) -> float:
        """Scale of X·W and λδ·Wᵀ before the rescale."""
        return self.share_scale * self.operand_scale

    @property
    def x_scale(self) -> float:
        return float(2**self.x_scale_bits)

    @property
    def gram_scale(self) -> float:
        return float(2**self.gram_scale_bits)

    @property
    def gram_product_scale(self) -> float:
        return self.x_scale * self.gram_scale

    def dither(self, scale: float) -> float:
        """Half-width of the dither on a plaintext encoded at `scale` (value units)."""
        return 2.0**self.dither_bits / scale

    def partial_bound(self, rows_per_group: int) -> float:
        """Largest |partial weight gradient| one group can hold (λ units)."""
        return rows_per_group * self.feature_bound * self.lam * self.delta_bound

    def partial_mask(self, rows_per_group: int) -> float:
        """Half-width of the masks hiding a group's partial weight gradient (λ units):
        2^mask_bits times its bound, or less when that would not fit `gram_limit` (very large
        batches or bounds; `partial_mask_bits` says how many bits are left)."""
        return 2.0 ** self.partial_mask_bits(rows_per_group) * self.partial_bound(rows_per_group)

    def partial_mask_bits(self, rows_per_group: int) -> float:
        room = math.log2(self.gram_limit / 8 / self.partial_bound(rows_per_group))
        return min(float(self.mask_bits), room)

    @property
    def z_noise(self) -> float:
        return 2.0**-self.z_noise_bits

    @property
    def dx_noise(self) -> float:
        """Flood std on λ·∂L/∂X (the collaborator divides λ out)."""
        return 2.0**-self.dx_noise_bits * self.lam

    @property
    def g_noise(self) -> float:
        """Flood std on λ·(Xᵀδ + M)."""
        return 2.0**-self.g_noise_bits * self.lam

    def gradient_mask_cap(self, lr: float, momentum: float) -> float:
        """Half-width of the host's fresh share part, so that λ·|M| stays within a quarter of
        `gram_limit`: M_t = (U_{t+1} - U_t)/η + μ·bU_t is at most 2·fresh·(1+μ)/η."""
        return self.gram_limit / 4 / self.lam * lr / (2 * (1 + momentum))

    def agreement(self, lr: float, momentum: float) -> str:
        """Canonical string every party must report identically (checked by the coordinator)."""
        c = self.ckks
        return (
            f"ckks(N={c.poly_modulus_degree},q={'-'.join(map(str, c.coeff_mod_bit_sizes))});"
            f"scales=2^{self.share_scale_bits}/2^{self.operand_scale_bits}/2^{self.x_scale_bits}/"
            f"2^{self.gram_scale_bits};dither=2^{self.dither_bits};"
            f"bounds(F={self.feature_bound!r},D={self.delta_bound!r},"
            f"lambda=2^{self.delta_scale_bits});masks=2^{self.mask_bits};"
            f"noise=2^-{self.z_noise_bits}/2^-{self.dx_noise_bits}/2^-{self.g_noise_bits};"
            f"shares={self.share_offset!r}/{self.share_fresh!r}/{self.share_slow!r}/"
            f"{self.share_slow_rho!r};block_rows={self.block_rows};"
            f"lr={float(lr)!r};momentum={float(momentum)!r}"
        )
