"""Additive shares W = U + V of a projection and their SGD-with-momentum updates.

torch.optim.SGD(momentum=μ, dampening=0, nesterov=False) on W with gradient G does
    buf <- μ·buf + G   (buf = G at the first step, i.e. buf_0 = 0)
    W   <- W - η·buf
Both steps are linear, so they hold for shares: buf = bU + bV, W = U + V.

The collaborator receives Y = G + M (never G) and runs the same recursion on (bV, V).
The host picks M so that its own buffer is a fresh random telescoping term,
    bU_t = -(Q_t - Q_{t-1}),  M_t = μ·bU_{t-1} - bU_t,  Q_0 = 0, Q_t ~ U[-A, A] fresh,
which gives U_t = U_0 + η·Q_t: the host's share stays bounded (|U_t - U_0| <= η·A) instead of
random-walking, and the collaborator's share V_t = W_t - U_0 - η·Q_t hides W_t behind a fresh
uniform of half-width η·A = share_noise at every step.
"""

from __future__ import annotations

import math

import numpy as np

from party_node.secure.he_linear import secure_uniform


def half_init(in_dim: int, out_dim: int) -> np.ndarray:
    """One party's half of an nn.Linear-style init: the sum of two halves has its variance.

    nn.Linear draws U[-1/sqrt(in), 1/sqrt(in)] (variance 1/(3·in)); each half is that scaled
    by 1/sqrt(2), so neither party knows the initial W, only its own half.
    """
    bound = 1.0 / math.sqrt(in_dim) / math.sqrt(2.0)
    return secure_uniform((in_dim, out_dim), bound)


class CollaboratorShare:
    """V and its momentum buffer; updated with the masked gradient only."""

    def __init__(self, v: np.ndarray, lr: float, momentum: float) -> None:
        self.v = v.astype(np.float64).copy()
        self.buf = np.zeros_like(self.v)
        self.lr, self.momentum = lr, momentum

    def step(self, masked_grad: np.ndarray) -> None:
        self.buf = self.momentum * self.buf + masked_grad
        self.v -= self.lr * self.buf


class HostShare:
    """U, its momentum buffer and the last telescoping mask Q; produces the mask M."""

    def __init__(
        self, u: np.ndarray, lr: float, momentum: float, share_noise: float, max_bound: float
    ) -> None:
        self.u = u.astype(np.float64).copy()
        self.buf = np.zeros_like(self.u)
        self.q_prev = np.zeros_like(self.u)
        self.lr, self.momentum = lr, momentum
        # A = share_noise / η, capped for tiny η (then the share noise is η·max_bound).
        self.mask_bound = min(share_noise / lr, max_bound)

    def next_mask(self) -> np.ndarray:
        """Draw Q_t, update U and bU, return M_t (added to G for the collaborator)."""
        q = secure_uniform(self.u.shape, self.mask_bound)
        new_buf = -(q - self.q_prev)
        mask = self.momentum * self.buf - new_buf
        self.u -= self.lr * new_buf
        self.buf, self.q_prev = new_buf, q
        return mask

    @property
    def max_mask(self) -> float:
        """Largest |M_t| possible: |Q_t - Q_{t-1}| + μ|Q_{t-1} - Q_{t-2}|."""
        return 2.0 * self.mask_bound * (1.0 + self.momentum)
