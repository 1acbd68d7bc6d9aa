"""The host's half of the secure projection layer for one collaborator (pure: dicts in/out).

Per training batch: `forward` -> (collaborator) -> `finish_forward` gives z = X·W; the host's
model produces δ = ∂L/∂z; `backward(δ)` -> (collaborator, computing) while the host runs
`weight_gradient()` -> (collaborator) ; `finish_backward` on the collaborator's reply. Test:
`forward(msg, train=False)` -> (collaborator) -> `finish_forward`. The host never sees X or V.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from party_node.secure import checks, he_linear, seal_io
from party_node.secure.context import OwnKeys, PeerKeys
from party_node.secure.errors import SecureProtocolError
from party_node.secure.params import KIND_BWD_GRAD, KIND_FWD_MASKED, Message, SecureParams
from party_node.secure.share_layer import ShareLayer, accumulate, geometry
from party_node.secure.shares import HostShare


class SecureHostLayer(ShareLayer):
    """Holds U (the host's share of one collaborator's W) and drives the host's side."""

    def __init__(
        self,
        feature_key: str,
        in_dim: int,
        out_dim: int,
        lr: float,
        momentum: float,
        own_keys: OwnKeys,
        collaborator_keys: PeerKeys,
        params: SecureParams | None = None,
        initial_share: np.ndarray | torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(feature_key, in_dim, out_dim, own_keys, params)
        self.peer = collaborator_keys
        self.share = HostShare(
            self.initial_share(initial_share),
            lr,
            momentum,
            self.params.share_noise,
            self.params.max_gradient_mask,
        )
        self.dtype = dtype
        self._cts: dict[tuple[int, int], Any] | None = None
        self._rows = 0
        self._mask: np.ndarray | None = None
        self._du: np.ndarray | None = None
        self._delta: np.ndarray | None = None

    @staticmethod
    def key_steps(in_dim: int, out_dim: int, params: SecureParams | None = None) -> set[int]:
        """Rotation steps the host's own Galois keys must cover for this collaborator."""
        return geometry(in_dim, out_dim, params).host_key_steps()

    # ---- forward --------------------------------------------------------------------------
    def forward(self, msg: Message, train: bool = True) -> Message:
        """Enc_C(X) -> Enc_C(X·U + R), R fresh in every slot (real and imaginary)."""
        step = KIND_FWD_MASKED
        rows = checks.rows_of(msg, step)
        if rows > self.params.value_bound:
            raise SecureProtocolError(f"{step}: {rows} rows is more than the protocol allows")
        names = self.tile_names("enc_x", rows, self.in_dim)
        checks.expect_names(msg, ["rows", *names.values()], step)
        cts = self.load_tiles(self.peer, msg, names, step)
        out, masks = self.masked_matmul(self.peer, cts, self.share.u, rows, "fwd")
        self._mask = self.geo.unpack(masks, rows, self.out_dim)
        self._rows = rows
        self._cts = cts if train else None
        self._du, self._delta = None, None
        return out

    def finish_forward(self, msg: Message) -> torch.Tensor:
        """X·U + R + X·V minus R: the projected features z = X·W (rows x out_dim)."""
        if self._mask is None:
            raise SecureProtocolError("secure.fwd_share arrived out of order")
        checks.expect_names(msg, ["z_masked"], "secure.fwd_share")
        masked = checks.tensor(msg, "z_masked", (self._rows, self.out_dim), "secure.fwd_share")
        checks.in_range(
            masked, self.params.mask_bound + self.params.value_bound, "masked projection"
        )
        z = checks.in_range(
            masked - self._mask, self.params.value_bound, f"projection of '{self.feature_key}'"
        )
        self._mask = None
        return torch.from_numpy(z).to(self.dtype)

    # ---- backward -------------------------------------------------------------------------
    def backward(self, delta: torch.Tensor) -> Message:
        """δ = ∂L/∂z -> Enc_H(λδ) for the collaborator's δ·Vᵀ. δ itself never leaves.

        Send this first, then compute `weight_gradient()` while the collaborator works.
        """
        if self._cts is None or self._delta is not None:
            raise SecureProtocolError("backward without a pending training forward")
        rows, geo = self._rows, self.geo
        if tuple(delta.shape) != (rows, self.out_dim):
            raise SecureProtocolError(
                f"δ has shape {list(delta.shape)}, expected {[rows, self.out_dim]}"
            )
        d = checks.in_range(
            delta.detach().cpu().to(torch.float64).numpy(), self.params.value_bound, "δ"
        )
        self._du = d @ self.share.u.T  # δ·Uᵀ with the pre-step U
        self._delta = d
        scaled = d * 2.0**self.params.delta_scale_bits
        checks.in_range(scaled, self.params.value_bound, "scaled δ")
        out: Message = {"rows": torch.tensor(rows, dtype=torch.int64)}
        for (r, a), vec in geo.pack(scaled).items():
            out[f"enc_delta/{r}/{a}"] = self.own.encrypt_bytes(vec)
        return out

    def weight_gradient(self) -> Message:
        """Enc_C(Xᵀδ + M) for the collaborator's share; steps U (see shares.HostShare)."""
        if self._cts is None or self._delta is None:
            raise SecureProtocolError("weight_gradient before backward")
        rows, geo, d = self._rows, self.geo, self._delta
        mask = self.share.next_mask()
        out: Message = {"rows": torch.tensor(rows, dtype=torch.int64)}
        for c in range(geo.col_tiles(self.in_dim)):
            c0, c1 = geo.col_range(c, self.in_dim)
            for j in range(-(-self.out_dim // geo.wrap)):
                j0, j1 = j * geo.wrap, min(self.out_dim, (j + 1) * geo.wrap)
                acc = None
                for r in range(geo.row_tiles(rows)):
                    part = np.zeros((geo.block_rows, geo.wrap))
                    chunk = d[r * geo.block_rows : (r + 1) * geo.block_rows, j0:j1]
                    part[: chunk.shape[0], : j1 - j0] = chunk
                    term = he_linear.block_gram(self.peer, geo, self._cts[(r, c)], part, c1 - c0)
                    acc = term if acc is None else accumulate(self.peer, acc, term)
                he_linear.gram_reduce(self.peer, geo, acc)
                idx = np.array(
                    [t * geo.stride + jj for t in range(c1 - c0) for jj in range(j1 - j0)],
                    dtype=np.int64,
                )
                fixed = mask[c0:c1, j0:j1].reshape(-1)
                # Leftover slots get masks of the same size as M (they hold partial sums of
                # Xᵀδ): a 2^30 mask there would cost the gradient precision for nothing.
                he_linear.add_mask(self.peer, acc, self.share.max_mask, (idx, fixed))
                out[f"grad_w/{c}/{j}"] = seal_io.save_bytes(acc)
        self._cts, self._delta = None, None
        return out

    def finish_backward(self, msg: Message) -> Message:
        """Decrypt δ·Vᵀ + N, add δ·Uᵀ: the collaborator gets δ·Wᵀ + N and removes N."""
        if self._du is None:
            raise SecureProtocolError(f"{KIND_BWD_GRAD}: no backward pending")
        rows, geo = self._rows, self.geo
        tiles = self.tile_names("grad_x", rows, self.in_dim)
        checks.expect_names(msg, ["rows", *tiles.values()], KIND_BWD_GRAD)
        if checks.rows_of(msg, KIND_BWD_GRAD) != rows:
            raise SecureProtocolError(f"{KIND_BWD_GRAD}: row count differs from the forward pass")
        vecs = self.decrypt_tiles(msg, tiles, KIND_BWD_GRAD)
        # (λδVᵀ + N)/λ + δUᵀ = δWᵀ + N/λ; the collaborator knows λ and removes N/λ.
        lam = 2.0**self.params.delta_scale_bits
        masked = geo.unpack(vecs, rows, self.in_dim) / lam + self._du
        self._du = None
        return {"dx_masked": torch.from_numpy(masked)}

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """U, its momentum buffer and the last telescoping mask (keys are never saved)."""
        s = self.share
        return {name: torch.from_numpy(getattr(s, name).copy()) for name in ("u", "buf", "q_prev")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = ("u", "buf", "q_prev")
        self.check_state_shapes(state, names)
        for name in names:
            setattr(self.share, name, state[name].to(torch.float64).numpy().copy())
