"""Protocol constants both parties must share, and the message vocabulary of one batch.

Mask sizes (see docs/secure-protocol.md, "Masks and precision"):
- forward mask R and feature-gradient mask N: uniform in [-2^30, 2^30] per slot, real and
  imaginary parts. Masked values are ~2^11 at most for the demo, so each decrypted slot is
  within statistical distance ~2^-19 of uniform; float64 decoding of 2^30-sized slots keeps
  ~1e-6 absolute error on the result.
- weight-gradient mask: the host's share drifts by a fresh uniform η·Q_t with |η·Q_t| <= 16
  (`share_noise`), so the collaborator's share V_t = W_t - U_0 - η·Q_t hides W_t behind ±16
  (weights are ~0.1-1) and the gradient behind ±16/η.
- every value entering or leaving the protocol must be finite and within `value_bound`;
  every decrypted slot within its mask bound plus `value_bound`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from party_node.secure.context import CkksParams

Message = dict[str, "torch.Tensor | bytes"]

#: Payload kinds, in protocol order for one training batch (test uses the first three).
KIND_ENC_X = "secure.enc_x"  # C -> H  Enc_C(X)
KIND_FWD_MASKED = "secure.fwd_masked"  # H -> C  Enc_C(X·U + R)
KIND_FWD_SHARE = "secure.fwd_share"  # C -> H  X·U + R + X·V (plaintext, masked)
KIND_BWD_ENC = "secure.bwd_enc"  # H -> C  Enc_H(λδ)
KIND_BWD_MASKED = "secure.bwd_masked"  # C -> H  Enc_H(λδ·Vᵀ + N)
KIND_BWD_WEIGHT = "secure.bwd_weight"  # H -> C  Enc_C(Xᵀδ + M) (computed meanwhile)
KIND_BWD_GRAD = "secure.bwd_grad"  # H -> C  δ·Wᵀ + N (plaintext, masked)
#: Test: all test rows in one exchange, no backward.
KIND_TEST_ENC_X = "secure.test_enc_x"
KIND_TEST_FWD_MASKED = "secure.test_fwd_masked"
KIND_TEST_FWD_SHARE = "secure.test_fwd_share"
#: Once per task, each direction: the sender's public context and Galois keys.
KIND_PUBLIC_KEYS = "secure.public_keys"


@dataclass(frozen=True)
class SecureParams:
    """Everything both parties must agree on besides the layer's shape and learning rate."""

    ckks: CkksParams = field(default_factory=CkksParams)
    mask_bits: int = 30
    share_noise: float = 16.0
    value_bound: float = 2.0**20
    block_rows: int = 128
    #: δ is encrypted as 2^delta_scale_bits·δ (δ of a mean loss is ~1e-3): keeps the
    #: feature-gradient error small next to the 2^30 mask; the host divides it back out.
    delta_scale_bits: int = 10

    def __post_init__(self) -> None:
        if self.mask_bits + 2 > self.ckks.headroom_bits(self.ckks.plain_scale_bits):
            raise ValueError(
                f"masks of 2^{self.mask_bits} do not fit the CKKS headroom "
                f"(2^{self.ckks.headroom_bits(self.ckks.plain_scale_bits)})"
            )

    @property
    def mask_bound(self) -> float:
        return float(2**self.mask_bits)

    @property
    def max_gradient_mask(self) -> float:
        """Cap on the weight-gradient mask's half-width (its ciphertext has less headroom)."""
        return float(2 ** (self.ckks.headroom_bits(self.ckks.gram_scale_bits) - 4))

    def agreement(self, lr: float, momentum: float) -> str:
        """Canonical string every party must report identically (checked by the coordinator)."""
        c = self.ckks
        return (
            f"ckks(N={c.poly_modulus_degree},q={'-'.join(map(str, c.coeff_mod_bit_sizes))},"
            f"scale=2^{c.scale_bits},plain=2^{c.plain_scale_bits},gram=2^{c.gram_scale_bits});"
            f"mask=2^{self.mask_bits};share_noise={self.share_noise!r};"
            f"block_rows={self.block_rows};delta_scale=2^{self.delta_scale_bits};"
            f"lr={float(lr)!r};momentum={float(momentum)!r}"
        )
