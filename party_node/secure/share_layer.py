"""What both halves of one collaborator's projection share: its shape, the agreed parameters,
the three packings, the scales results arrive at, and the loops that name, load and decrypt
ciphertexts in messages.

`SecureHostLayer` and `SecureCollaboratorLayer` derive from `ShareLayer`, so the two sides
cannot drift apart on how an entry is named, packed, scaled or bounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from party_node.secure import checks
from party_node.secure.context import OwnKeys
from party_node.secure.errors import SecureProtocolError
from party_node.secure.params import Message, SecureParams
from party_node.secure.plans import DiagPlan, GramPlan


class Geometry:
    """The packings both parties derive (never send) for an (in_dim, out_dim) projection:
    `fwd` for X·W (B = W, in x out), `bwd` for λδ·Wᵀ (B = Wᵀ, out x in), `gram` for Xᵀλδ."""

    def __init__(self, in_dim: int, out_dim: int, params: SecureParams) -> None:
        slots, rows = params.ckks.slots, params.block_rows
        self.fwd = DiagPlan.make(slots, in_dim, out_dim, rows)
        self.bwd = DiagPlan.make(slots, out_dim, in_dim, rows)
        self.gram = GramPlan.make(slots, in_dim, out_dim, rows)


class ShareLayer:
    """One party's side of one collaborator's projection (W = U + V)."""

    def __init__(
        self,
        feature_key: str,
        in_dim: int,
        out_dim: int,
        own_keys: OwnKeys,
        params: SecureParams | None,
    ) -> None:
        self.feature_key = feature_key
        self.in_dim, self.out_dim = in_dim, out_dim
        self.params = params or SecureParams()
        self.geo = Geometry(in_dim, out_dim, self.params)
        self.own = own_keys
        p, q = self.params, float(own_keys.engine.last_prime())
        #: Scales finished results arrive at (products over the dropped prime).
        self.share_result_scale = p.product_scale / q
        self.gram_result_scale = p.gram_product_scale / q

    def check_shape(self, given: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
        arr = np.asarray(given, dtype=np.float64)
        if arr.shape != (self.in_dim, self.out_dim):
            raise ValueError(
                f"{what} has shape {arr.shape}, expected {(self.in_dim, self.out_dim)}"
            )
        return arr

    def check_state_shapes(self, state: dict[str, torch.Tensor], names: tuple[str, ...]) -> None:
        """A checkpoint's share tensors must have the layer's (in_dim, out_dim)."""
        for name in names:
            if tuple(state[name].shape) != (self.in_dim, self.out_dim):
                raise ValueError(f"checkpoint '{name}' has shape {list(state[name].shape)}")

    # ---- messages ---------------------------------------------------------------------------
    @staticmethod
    def names(prefix: str, count: int) -> list[str]:
        return [f"{prefix}/{i}" for i in range(count)]

    @staticmethod
    def load(engine: Any, msg: Message, names: list[str], step: str, primes: int, scale: float):
        """Ciphertexts named `names`, each checked for level and scale."""
        return [engine.load_ciphertext(checks.blob(msg, n, step), n, primes, scale) for n in names]

    def decrypt(self, msg: Message, names: list[str], step: str, scale: float) -> list:
        """Our own finished results (one prime, `scale`), decrypted to complex slots."""
        out = []
        for ct in self.load(self.own.engine, msg, names, step, 1, scale):
            vec = self.own.decrypt(ct)
            if not np.isfinite(vec).all():
                raise SecureProtocolError(f"{step}: decrypted values are not finite")
            out.append(vec)
        return out

    def u_names(self) -> dict[tuple[int, int], str]:
        """Entry names of Enc_H(U)'s baby-step copies (forward packing), by (tile, copy)."""
        plan = self.geo.fwd
        return {(t, h): f"u/{t}/{h}" for t in range(plan.tiles) for h in range(plan.n1)}

    def v_names(self) -> dict[tuple[int, int], str]:
        """Entry names of Enc_C(Vᵀ)'s baby-step copies (backward packing), by (tile, copy)."""
        plan = self.geo.bwd
        return {(t, h): f"v/{t}/{h}" for t in range(plan.tiles) for h in range(plan.n1)}

    @staticmethod
    def rows_entry(rows: int) -> Message:
        return {"rows": torch.tensor(rows, dtype=torch.int64)}

    def check_rows(self, msg: Message, step: str) -> int:
        rows = checks.rows_of(msg, step)
        if rows > 1 << 20:
            raise SecureProtocolError(f"{step}: {rows} rows is more than the protocol allows")
        return rows

    # ---- compact layout (the initial share exchange) ------------------------------------
    def compact_pack(self, matrix: np.ndarray) -> list[np.ndarray]:
        flat, slots = matrix.ravel(), self.params.ckks.slots
        return [flat[i : i + slots] for i in range(0, flat.size, slots)]

    def compact_count(self) -> int:
        return -(-(self.in_dim * self.out_dim) // self.params.ckks.slots)

    def compact_unpack(self, vecs: list[np.ndarray]) -> np.ndarray:
        n = self.in_dim * self.out_dim
        return np.concatenate([v.real for v in vecs])[:n].reshape(self.in_dim, self.out_dim)
