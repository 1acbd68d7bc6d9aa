"""How a (rows x cols) matrix is packed into CKKS slots, and which rotations that needs.

One ciphertext holds up to `blocks` columns of up to `block_rows` rows each: column t occupies
slots [t*stride, t*stride + block_rows), followed by a copy of its first `wrap` entries (so
in-block rotations by < wrap read the right rows). For the MNIST demo (batch 128, 20 -> 10):
block_rows 128, wrap 16, stride 144, 28 blocks per ciphertext: the whole batch fits one
ciphertext. Larger batches or widths use several ciphertexts ("tiles"); any (in_dim, out_dim)
works.

Two products are evaluated on packed ciphertexts (see `he_linear`):
- block matmul (baby-step giant-step over diagonals of whole blocks): out_u = sum_t A[t,u] in_t;
  X·U in the forward pass and δ·Vᵀ for the feature gradient;
- block gram (hybrid diagonal method inside each block): G[t, j] = sum_b in_t[b] D[b, j]; the
  weight gradient Xᵀδ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class BsgsPlan:
    """Diagonals k in [k0, k0 + count) split as k = k0 + g*n1 + h (h < n1 baby, g < n2 giant)."""

    k0: int
    count: int
    n1: int
    n2: int

    @classmethod
    def make(cls, k0: int, count: int) -> BsgsPlan:
        n1 = max(1, math.ceil(math.sqrt(count)))
        return cls(k0=k0, count=count, n1=n1, n2=math.ceil(count / n1))


@dataclass(frozen=True)
class Geometry:
    """Packing shared by both parties for one collaborator's layer (derived, never sent)."""

    slots: int
    in_dim: int
    out_dim: int
    block_rows: int = 128

    @property
    def wrap(self) -> int:
        """Output columns handled per block-gram pass (power of two, <= block_rows)."""
        return min(_next_pow2(self.out_dim), 64, self.block_rows)

    @property
    def stride(self) -> int:
        return self.block_rows + self.wrap

    @property
    def blocks(self) -> int:
        return self.slots // self.stride

    def __post_init__(self) -> None:
        if self.in_dim < 1 or self.out_dim < 1:
            raise ValueError("in_dim and out_dim must be >= 1")
        if self.block_rows & (self.block_rows - 1) or self.slots // (self.block_rows + 64) < 1:
            raise ValueError("block_rows must be a power of two that fits the slots")

    # ---- tiling -------------------------------------------------------------------------
    def row_tiles(self, rows: int) -> int:
        return max(1, math.ceil(rows / self.block_rows))

    def col_tiles(self, cols: int) -> int:
        return math.ceil(cols / self.blocks)

    def col_range(self, tile: int, cols: int) -> tuple[int, int]:
        start = tile * self.blocks
        return start, min(cols, start + self.blocks)

    # ---- rotation plans -----------------------------------------------------------------
    def matmul_plan(self, cols_in: int, cols_out: int) -> BsgsPlan:
        t_in, t_out = min(cols_in, self.blocks), min(cols_out, self.blocks)
        return BsgsPlan.make(k0=-(t_out - 1), count=t_in + t_out - 1)

    def gram_plan(self) -> BsgsPlan:
        return BsgsPlan.make(k0=0, count=self.wrap)

    def gram_reduce_steps(self) -> list[int]:
        steps, s = [], self.block_rows // 2
        while s >= self.wrap:
            steps.append(s)
            s //= 2
        return steps

    def matmul_steps(self, cols_in: int, cols_out: int) -> set[int]:
        p = self.matmul_plan(cols_in, cols_out)
        baby = {((p.k0 + h) * self.stride) % self.slots for h in range(p.n1)}
        giant = {(g * p.n1 * self.stride) % self.slots for g in range(1, p.n2)}
        return (baby | giant) - {0}

    def collaborator_key_steps(self) -> set[int]:
        """Rotations the host applies to the collaborator's ciphertexts (X·U and Xᵀδ)."""
        p = self.gram_plan()
        gram = set(range(1, p.n1)) | {g * p.n1 for g in range(1, p.n2)}
        return self.matmul_steps(self.in_dim, self.out_dim) | gram | set(self.gram_reduce_steps())

    def host_key_steps(self) -> set[int]:
        """Rotations a collaborator applies to the host's ciphertexts (δ·Vᵀ)."""
        return self.matmul_steps(self.out_dim, self.in_dim)

    # ---- packing ------------------------------------------------------------------------
    def pack(self, matrix: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """Slot vectors per (row tile, column tile), with the wrap copy after each block."""
        rows, cols = matrix.shape
        out: dict[tuple[int, int], np.ndarray] = {}
        for r in range(self.row_tiles(rows)):
            part = matrix[r * self.block_rows : (r + 1) * self.block_rows]
            for c in range(self.col_tiles(cols)):
                c0, c1 = self.col_range(c, cols)
                vec = np.zeros(self.slots)
                for t, col in enumerate(range(c0, c1)):
                    base = t * self.stride
                    vec[base : base + part.shape[0]] = part[:, col]
                    n = min(self.wrap, part.shape[0])
                    vec[base + self.block_rows : base + self.block_rows + n] = part[:n, col]
                out[(r, c)] = vec
        return out

    def unpack(
        self, vectors: dict[tuple[int, int], np.ndarray], rows: int, cols: int
    ) -> np.ndarray:
        """Inverse of the block placement for results: out[row, col] at slot t*stride + b."""
        out = np.zeros((rows, cols))
        for (r, c), vec in vectors.items():
            r0 = r * self.block_rows
            n = min(self.block_rows, rows - r0)
            c0, c1 = self.col_range(c, cols)
            for t, col in enumerate(range(c0, c1)):
                out[r0 : r0 + n, col] = vec[t * self.stride : t * self.stride + n]
        return out

    def result_slots(self, rows: int, cols: int) -> np.ndarray:
        """Boolean mask of the slots of one result ciphertext that carry values (for tests)."""
        used = np.zeros(self.slots, dtype=bool)
        for t in range(min(cols, self.blocks)):
            used[t * self.stride : t * self.stride + min(rows, self.block_rows)] = True
        return used
