"""Additive shares W = U + V of a projection and their SGD-with-momentum updates.

torch.optim.SGD(momentum=μ, dampening=0, nesterov=False) on W with gradient G does
    buf <- μ·buf + G   (buf = G at the first step, i.e. buf_0 = 0)
    W   <- W - η·buf
Both steps are linear, so they hold for shares: buf = bU + bV, W = U + V.

The collaborator receives Y = G + M (never G) and runs the recursion on (bV, V). The host runs
it on (bU, U) with gradient -M, and picks M so that its share follows a path of its own,
independent of the data:
    U_t = U_0 + Q_t + L_t,   Q_t ~ U[±fresh] fresh every step,   L_t a stationary AR(1)
    (sd `slow`, correlation time ~1000 steps),
    M_t = μ·bU_t + (U_{t+1} - U_t)/η,   bU_{t+1} = -(U_{t+1} - U_t)/η.
So the collaborator's share V_t = W_t - U_t hides W_t behind U_0 (the collaborator's own large
initial offset made it large, see `initial_offset`), the drift of W behind the slow part L, and
each step's gradient behind the fresh part Q. Randomness that hides anything comes from the OS
CSPRNG; the halves of the initial W are model initialisation and come from torch's generator,
like every other layer's weights (so a seeded run is reproducible).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from party_node.secure.params import SecureParams


def secure_uniform(shape: tuple[int, ...] | int, bound: float) -> np.ndarray:
    """Uniform values in [-bound, bound) from the OS CSPRNG (53 random bits each)."""
    n = int(np.prod(shape))
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    unit = raw.astype(np.float64) * (1.0 / (1 << 53))
    return ((2.0 * unit - 1.0) * bound).reshape(shape)


def secure_normal(shape: tuple[int, ...] | int, std: float) -> np.ndarray:
    """Gaussian values from the OS CSPRNG (Box-Muller)."""
    u1 = (secure_uniform(shape, 0.5) + 0.5).clip(1e-300, 1.0)
    u2 = secure_uniform(shape, 0.5) + 0.5
    return std * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def init_bound(in_dim: int) -> float:
    """w = 1/sqrt(in_dim), the scale of a projection's weights (offsets are multiples of it)."""
    return 1.0 / math.sqrt(in_dim)


def projection_init_bound(in_dim: int) -> float:
    """W_0 ~ U[±sqrt(3/in_dim)]: variance 1/in_dim, so the projection keeps the features'
    scale. nn.Linear's default (±1/sqrt(in_dim)) shrinks it by sqrt(3), which slowed the secure
    demo's learning behind the plain one's (the layer the plain demo does not have)."""
    return math.sqrt(3.0 / in_dim)


def host_init_half(in_dim: int, out_dim: int) -> np.ndarray:
    """The host's factor a of W_0 = a ⊙ b (torch's generator, like any init)."""
    bound = projection_init_bound(in_dim)
    return torch.empty(in_dim, out_dim, dtype=torch.float64).uniform_(-bound, bound).numpy()


def collaborator_init_half(in_dim: int, out_dim: int) -> np.ndarray:
    """The collaborator's factor b of W_0 = a ⊙ b: random signs. W_0 = a ⊙ b is then exactly
    uniform like a and independent of b; the host knows only |W_0| = |a|."""
    return torch.randint(0, 2, (in_dim, out_dim), dtype=torch.float64).mul_(2).sub_(1).numpy()


def initial_offset(in_dim: int, out_dim: int, params: SecureParams) -> np.ndarray:
    """The collaborator's initial share V_0: a large fresh offset, independent of W_0."""
    return secure_uniform((in_dim, out_dim), params.share_offset * init_bound(in_dim))


@dataclass(frozen=True)
class ShareStep:
    """One drawn step of the host's share path: U_{t+1}, bU_{t+1}, the slow part, M_t."""

    target: np.ndarray
    buf: np.ndarray
    slow: np.ndarray
    mask: np.ndarray


class CollaboratorShare:
    """V and its momentum buffer; updated with the masked gradient only."""

    def __init__(self, v: np.ndarray, lr: float, momentum: float) -> None:
        self.v = np.asarray(v, dtype=np.float64).copy()
        self.buf = np.zeros_like(self.v)
        self.lr, self.momentum = lr, momentum

    def step(self, masked_grad: np.ndarray) -> None:
        self.buf = self.momentum * self.buf + masked_grad
        self.v -= self.lr * self.buf

    def ahead(self) -> np.ndarray:
        """The part of the next V known before the next masked gradient: V - η·μ·buf (the
        step then subtracts η·Y)."""
        return self.v - self.lr * self.momentum * self.buf


class HostShare:
    """U, its momentum buffer and its re-sharing path; produces the gradient mask M."""

    def __init__(
        self, u: np.ndarray, lr: float, momentum: float, params: SecureParams, in_dim: int
    ) -> None:
        self.u = np.asarray(u, dtype=np.float64).copy()
        self.u0 = self.u.copy()
        self.buf = np.zeros_like(self.u)
        self.lr, self.momentum = lr, momentum
        w, cap = init_bound(in_dim), params.gradient_mask_cap(lr, momentum)
        # For a tiny η the path's steps are capped so that λ·M fits the ciphertext.
        self.fresh = min(params.share_fresh * w, cap)
        self.slow_sd = min(params.share_slow * w, cap * (1 + momentum) / 2)
        self.rho = params.share_slow_rho
        # Stationary from the start (the first step's mask absorbs the jump): the drift of W
        # is hidden from the first step on.
        self.slow = secure_normal(self.u.shape, self.slow_sd)

    def draw(self) -> ShareStep:
        """The next step of our path and the mask it implies, from the current state (pure:
        made ahead of the batch, applied by `commit`)."""
        q = secure_uniform(self.u.shape, self.fresh)
        innovation = secure_normal(self.u.shape, self.slow_sd * math.sqrt(1 - self.rho**2))
        slow = self.rho * self.slow + innovation
        target = self.u0 + q + slow
        new_buf = -(target - self.u) / self.lr
        mask = self.momentum * self.buf - new_buf
        return ShareStep(target=target, buf=new_buf, slow=slow, mask=mask)

    def commit(self, step: ShareStep) -> np.ndarray:
        """Move to the drawn step; returns M_t (added to G for the collaborator)."""
        self.u, self.buf, self.slow = step.target, step.buf, step.slow
        return step.mask

    def next_mask(self) -> np.ndarray:
        """Draw and commit at once."""
        return self.commit(self.draw())

    @property
    def max_mask(self) -> float:
        """Largest |M_t| to expect (fresh part; the slow part's steps are small)."""
        return 2.0 * self.fresh * (1.0 + self.momentum) / self.lr + 8 * self.slow_sd

    def state(self) -> dict[str, np.ndarray]:
        return {"u": self.u, "buf": self.buf, "u0": self.u0, "slow": self.slow}

    def load(self, state: dict[str, np.ndarray]) -> None:
        for name in ("u", "buf", "u0", "slow"):
            setattr(self, name, np.asarray(state[name], dtype=np.float64).copy())
