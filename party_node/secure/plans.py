"""How matrices are packed into CKKS slots for the three products, and what each costs.

`DiagPlan` — O = A·B where A (rows x K) is the computing party's plaintext and B (K x a) is in
one ciphertext per K-tile under the other party's key (its share of W, plus ours added in).
Slots are cut into n_g groups of G (a power of two, so folding the groups with log2(n_g)
rotations is cyclic and leaves the full sum in every group, nothing partial). In group g,
"row" c, column j the ciphertext holds B[g·d + (c mod d), j]; rotating by a·r moves row c + r
under output row c, so d rotations (baby-step giant-step: n1 - 1 + n2 - 1) bring every k of the
group under every output, and the plaintext diagonals pick the matching A[b, k]. Two rows share
a complex slot (real: row b, imaginary: row b + R2), so each slot carries two outputs.
The ciphertext is the same for any number of rows: it is sent once per step and reused for every
chunk of R2·2 rows (the test set too).

`GramPlan` — Y = Xᵀ(λδ) (n x o): the collaborator sends X broadcast over j (in each group, one
row b: X[b, t] + i·X[b, t + h] repeated o_s times), the host multiplies by λδ[b, j]; each group
then holds one row's products, and the key owner sums the groups after decryption. Zero-sum
masks across groups (2^mask_bits × the partial's bound) hide every partial; no rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Rough CPU per operation (ms, unloaded), used only to choose between valid layouts. A baby
#: step is a rotated copy the owner encrypts ahead (off the critical path) and we load: its
#: CPU (encode, encrypt, save, load, our share's encode) is ~3.3 ms against 1.5 ms for a
#: rotation, so copies pay only where they save two rotations; the machine's two cores are
#: shared by both parties, so CPU, not the critical path, sets the epoch under load.
_ROTATION_MS, _PRODUCT_MS, _RESULT_MS, _BABY_MS = 1.5, 0.7, 4.5, 1.6


def _log2(n: int) -> int:
    return n.bit_length() - 1


@dataclass(frozen=True)
class DiagPlan:
    """Packing of O = A·B with B (K x a) encrypted; see the module docstring."""

    slots: int
    k_dim: int
    a: int
    tile_k: int  # K per ciphertext (the last tile may be shorter)
    group: int  # G
    d: int  # k's per group
    r2: int  # output rows per chunk and complex part (2·r2 rows per chunk)
    n1: int  # baby steps

    @property
    def groups(self) -> int:
        return self.slots // self.group

    @property
    def tiles(self) -> int:
        return -(-self.k_dim // self.tile_k)

    @property
    def n2(self) -> int:
        return -(-self.d // self.n1)

    @property
    def chunk_rows(self) -> int:
        return 2 * self.r2

    def chunks(self, rows: int) -> int:
        return max(1, -(-rows // self.chunk_rows))

    def k_range(self, tile: int) -> tuple[int, int]:
        k0 = tile * self.tile_k
        return k0, min(self.k_dim, k0 + self.tile_k)

    # ---- rotations -----------------------------------------------------------------------
    def giant_steps(self) -> list[int]:
        return [self.a * self.n1 * g for g in range(1, self.n2)]

    def fold_steps(self) -> list[int]:
        return [self.group << i for i in range(_log2(self.groups))]

    def key_steps(self) -> set[int]:
        """Rotations the owner's Galois keys must cover."""
        return {s % self.slots for s in self.giant_steps() + self.fold_steps()}

    def rotations(self, rows: int) -> int:
        return self.chunks(rows) * ((self.n2 - 1) + len(self.fold_steps()))

    # ---- packing -------------------------------------------------------------------------
    def pack_b(self, b: np.ndarray) -> list[np.ndarray]:
        """B (K x a) in the ciphertext layout, one real slot vector per K-tile."""
        out = []
        rows = self.r2 + self.d - 1
        c = np.arange(rows)
        for tile in range(self.tiles):
            k0, k1 = self.k_range(tile)
            vec = np.zeros(self.slots)
            for g in range(self.groups):
                k = g * self.d + (c % self.d)
                valid = k < (k1 - k0)
                block = np.zeros((rows, self.a))
                block[valid] = b[k0 + k[valid]]
                vec[g * self.group : g * self.group + rows * self.a] = block.ravel()
            out.append(vec)
        return out

    def babies(self, vec: np.ndarray) -> list[np.ndarray]:
        """The baby-step copies of one packed tile: left-rotated by a·h for h < n1."""
        return [np.roll(vec, -self.a * h) for h in range(self.n1)]

    def diagonals(self, a_mat: np.ndarray, chunk: int, tile: int) -> list[np.ndarray]:
        """The plaintext diagonal for each rotation r < d of one chunk and K-tile (complex:
        rows b and b + r2 of the chunk), not yet shifted for the giant steps."""
        base = chunk * self.chunk_rows
        k0, k1 = self.k_range(tile)
        part = np.zeros((self.chunk_rows, self.tile_k))
        rows = a_mat[base : base + self.chunk_rows, k0:k1]
        part[: rows.shape[0], : rows.shape[1]] = rows
        pairs = part[: self.r2] + 1j * part[self.r2 :]  # (r2, tile_k)
        b = np.arange(self.r2)
        out = []
        for r in range(self.d):
            vec = np.zeros(self.slots, dtype=np.complex128)
            for g in range(self.groups):
                k = g * self.d + ((b + r) % self.d)
                vals = np.where(k < self.tile_k, pairs[b, np.minimum(k, self.tile_k - 1)], 0)
                block = np.repeat(vals, self.a)  # (b, j) row-major, same A[b, k] for every j
                vec[g * self.group : g * self.group + self.r2 * self.a] = block
            out.append(vec)
        return out

    def unpack(self, vec: np.ndarray, rows: int, chunk: int) -> np.ndarray:
        """Output rows of one chunk from group 0 of a folded result."""
        block = vec[: self.r2 * self.a].reshape(self.r2, self.a)
        both = np.concatenate([block.real, block.imag])
        n = min(self.chunk_rows, rows - chunk * self.chunk_rows)
        return both[:n]

    def pack_output(self, o_mat: np.ndarray, chunk: int) -> np.ndarray:
        """Output rows of one chunk in the layout of a folded result (every group): the
        inverse of `unpack`, so a plaintext part of A·B can be added to the product."""
        base = chunk * self.chunk_rows
        part = np.zeros((self.chunk_rows, self.a))
        rows = o_mat[base : base + self.chunk_rows]
        part[: rows.shape[0]] = rows
        block = (part[: self.r2] + 1j * part[self.r2 :]).ravel()
        vec = np.zeros(self.slots, dtype=np.complex128)
        for g in range(self.groups):
            vec[g * self.group : g * self.group + block.size] = block
        return vec

    def output_slots(self) -> np.ndarray:
        """Boolean mask of the slots that carry outputs after folding (every group)."""
        used = np.zeros(self.slots, dtype=bool)
        for g in range(self.groups):
            used[g * self.group : g * self.group + self.r2 * self.a] = True
        return used

    @classmethod
    def make(cls, slots: int, k_dim: int, a: int, block_rows: int) -> DiagPlan:
        """The cheapest valid packing for one block of rows (fewest K-tiles first)."""
        if a > slots // 2:
            raise ValueError(f"{a} output columns do not fit one ciphertext")
        for tiles in range(1, k_dim + 1):
            tile_k = -(-k_dim // tiles)
            best: tuple[float, DiagPlan] | None = None
            for shift in range(_log2(slots) + 1):
                group = 1 << shift
                d = -(-tile_k // (slots // group))
                r2 = min(group // a - d + 1, block_rows // 2)
                if r2 < 1:
                    continue
                for n1 in range(1, d + 1):
                    plan = cls(slots, k_dim, a, tile_k, group, d, r2, n1)
                    chunks = plan.chunks(block_rows)
                    cost = (
                        plan.rotations(block_rows) * _ROTATION_MS
                        + chunks * tiles * d * _PRODUCT_MS
                        + chunks * _RESULT_MS
                        + tiles * (n1 - 1) * _BABY_MS
                    )
                    if best is None or cost < best[0]:
                        best = (cost, plan)
            if best is not None:
                return best[1]
        raise ValueError(f"no packing fits a {k_dim} x {a} matrix into {slots} slots")


@dataclass(frozen=True)
class GramPlan:
    """Packing of Y = Xᵀ(λδ) (n x o) from X broadcast over j; see the module docstring."""

    slots: int
    n: int
    o: int
    h_part: int  # pairs (t, t + h) per t-part
    o_part: int  # columns j per j-part

    @property
    def h(self) -> int:
        return -(-self.n // 2)

    @property
    def t_parts(self) -> int:
        return -(-self.h // self.h_part)

    @property
    def j_parts(self) -> int:
        return -(-self.o // self.o_part)

    @property
    def group(self) -> int:
        return self.h_part * self.o_part

    @property
    def groups(self) -> int:
        return self.slots // self.group

    def x_cts(self, rows: int) -> int:
        """Ciphertexts of X per t-part (one row per group)."""
        return max(1, -(-rows // self.groups))

    def rows_per_group(self, rows: int) -> int:
        return self.x_cts(rows)

    def result_cts(self) -> int:
        return self.t_parts * self.j_parts

    def pack_x(self, x: np.ndarray, tp: int) -> list[np.ndarray]:
        """X's ciphertexts for t-part tp: group g of ciphertext k holds row k·groups + g."""
        rows = x.shape[0]
        t0 = tp * self.h_part
        lo = np.zeros((rows, self.h_part))
        hi = np.zeros((rows, self.h_part))
        for i in range(self.h_part):
            if t0 + i < self.n:
                lo[:, i] = x[:, t0 + i]
            if t0 + i + self.h < self.n:
                hi[:, i] = x[:, t0 + i + self.h]
        pairs = np.repeat(lo + 1j * hi, self.o_part, axis=1)  # (rows, h_part·o_part)
        out = []
        for k in range(self.x_cts(rows)):
            vec = np.zeros(self.slots, dtype=np.complex128)
            part = pairs[k * self.groups : (k + 1) * self.groups]
            vec[: part.size] = part.ravel()
            out.append(vec)
        return out

    def pack_delta(self, delta: np.ndarray, k: int, jp: int) -> np.ndarray:
        """λδ[b, j] for ciphertext k, j-part jp, tiled over t (real)."""
        j0 = jp * self.o_part
        part = np.zeros((self.groups, self.o_part))
        rows = delta[k * self.groups : (k + 1) * self.groups, j0 : j0 + self.o_part]
        part[: rows.shape[0], : rows.shape[1]] = rows
        block = np.tile(part, (1, self.h_part))  # (g, t''·o_part + jj)
        vec = np.zeros(self.slots)
        vec[: block.size] = block.ravel()
        return vec

    def group_sum(self, vec: np.ndarray) -> np.ndarray:
        """The owner's sum over groups: (h_part, o_part) complex."""
        used = vec[: self.groups * self.group].reshape(self.groups, self.h_part, self.o_part)
        return used.sum(axis=0)

    def place(self, y: np.ndarray, sums: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
        """Y (n x o) from the group sums of every (t-part, j-part)."""
        for (tp, jp), s in sums.items():
            t0, j0 = tp * self.h_part, jp * self.o_part
            for i in range(self.h_part):
                cols = slice(j0, min(self.o, j0 + self.o_part))
                width = cols.stop - cols.start
                if t0 + i < self.n:
                    y[t0 + i, cols] = s[i, :width].real
                if t0 + i + self.h < self.n:
                    y[t0 + i + self.h, cols] = s[i, :width].imag
        return y

    @classmethod
    def make(cls, slots: int, n: int, o: int, block_rows: int) -> GramPlan:
        """The packing with the fewest ciphertexts for one block of rows."""
        h = -(-n // 2)
        best: tuple[int, GramPlan] | None = None
        for h_part in range(1, h + 1):
            for o_part in range(1, o + 1):
                if h_part * o_part > slots:
                    continue
                plan = cls(slots, n, o, h_part, o_part)
                count = plan.t_parts * (plan.x_cts(block_rows) + plan.j_parts)
                if best is None or count < best[0]:
                    best = (count, plan)
        if best is None:
            raise ValueError("no weight-gradient packing fits")
        return best[1]
