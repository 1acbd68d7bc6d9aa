"""The host's half of the secure projection layer for one collaborator (pure: dicts in/out).

Per training batch: `forward(fwd)` decrypts z = X·W (the collaborator computed it under our
key); the host's model gives δ; `backward(δ)` computes Enc_C(λδ·Wᵀ) for the collaborator;
`weight_gradient(enc_x)` computes Enc_C(λ(Xᵀδ + M)), steps U and returns the next Enc_H(U).
Test: `forward(test_fwd, train=False)`. The host decrypts only z; it never sees X, V or W,
and returns nothing it decrypted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from party_node.secure import checks, products
from party_node.secure.context import OwnKeys, PeerKeys
from party_node.secure.errors import SecureProtocolError
from party_node.secure.params import (
    KIND_ENC_X,
    KIND_FWD,
    KIND_INIT_SHARE,
    KIND_TEST_FWD,
    Message,
    SecureParams,
)
from party_node.secure.share_layer import Geometry, ShareLayer
from party_node.secure.shares import HostShare, host_init_half, init_bound


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
        self.lr, self.momentum = lr, momentum
        self.share: HostShare | None = None
        if initial_share is not None:
            self.start(self.check_shape(initial_share, "initial share"))
        self.dtype = dtype
        self._a: np.ndarray | None = None
        self._v_cts: list[Any] | None = None
        self._rows = 0
        self._delta: np.ndarray | None = None

    @staticmethod
    def key_steps(in_dim: int, out_dim: int, params: SecureParams | None = None) -> set[int]:
        """Rotations the host's own Galois keys must cover (the collaborator folds X·W)."""
        return Geometry(in_dim, out_dim, params or SecureParams()).fwd.key_steps()

    def start(self, u: np.ndarray) -> None:
        self.share = HostShare(u, self.lr, self.momentum, self.params, self.in_dim)

    # ---- fresh tasks: W_0 = a ⊙ b without anyone learning it --------------------------------
    def init_request(self) -> Message:
        """Enc_H(a), a ~ U[-w, w] (our factor of W_0)."""
        self._a = host_init_half(self.in_dim, self.out_dim)
        vecs = self.compact_pack(self._a)
        return {
            n: self.own.encrypt_bytes(v, self.params.share_scale)
            for n, v in zip(self.names("a", len(vecs)), vecs, strict=True)
        }

    def init_finish(self, msg: Message) -> None:
        """U_0 = a ⊙ b - V_0 (the collaborator's b and offset V_0 stay unknown to us)."""
        if self._a is None:
            raise SecureProtocolError(f"{KIND_INIT_SHARE} arrived before our request")
        names = self.names("w0", self.compact_count())
        checks.expect_names(msg, names, KIND_INIT_SHARE)
        u0 = self.compact_unpack(self.decrypt(msg, names, KIND_INIT_SHARE, self.share_result_scale))
        w = init_bound(self.in_dim)
        checks.in_range(u0, w * (1 + self.params.share_offset) + 1.0, "initial share")
        self._a = None
        self.start(u0)

    def share_message(self) -> Message:
        """Enc_H(U) in the forward packing, for the collaborator's X·W."""
        u = self._require_share()
        vecs = self.geo.fwd.pack_b(u.u)
        return {
            n: self.own.encrypt_bytes(v, self.params.share_scale)
            for n, v in zip(self.names("u", len(vecs)), vecs, strict=True)
        }

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, msg: Message, train: bool = True) -> torch.Tensor:
        """Decrypt z = X·W; for training also keep Enc_C(Vᵀ) for the backward pass."""
        step = KIND_FWD if train else KIND_TEST_FWD
        rows = self.check_rows(msg, step)
        z_names = self.names("z", self.geo.fwd.chunks(rows))
        v_names = self.names("v", self.geo.bwd.tiles) if train else []
        checks.expect_names(msg, ["rows", *z_names, *v_names], step)
        vecs = self.decrypt(msg, z_names, step, self.share_result_scale)
        z = np.concatenate([self.geo.fwd.unpack(v, rows, i) for i, v in enumerate(vecs)])
        checks.in_range(z, self.params.output_limit, f"projection of '{self.feature_key}'")
        self._delta = None
        if train:
            scale = self.params.share_scale
            self._v_cts = self.load(self.peer.engine, msg, v_names, step, 2, scale)
            self._rows = rows
        else:
            self._v_cts = None
        return torch.from_numpy(z).to(self.dtype)

    # ---- backward ---------------------------------------------------------------------------
    def backward(self, delta: torch.Tensor) -> Message:
        """δ = ∂L/∂z -> Enc_C(λδ·(U + V)ᵀ): the collaborator decrypts ∂L/∂X. δ never leaves."""
        if self._v_cts is None or self._delta is not None:
            raise SecureProtocolError("backward without a pending training forward")
        rows = self._rows
        if tuple(delta.shape) != (rows, self.out_dim):
            raise SecureProtocolError(
                f"δ has shape {list(delta.shape)}, expected {[rows, self.out_dim]}"
            )
        d = delta.detach().cpu().to(torch.float64).numpy()
        checks.in_range(
            d,
            self.params.delta_bound,
            "δ = ∂L/∂z",
            "raise project_layer_delta_bound at every party",
        )
        self._delta = d * self.params.lam
        scale = self.params.share_scale
        cts = []
        for ct, ut in zip(self._v_cts, self.geo.bwd.pack_b(self._require_share().u.T), strict=True):
            cts.append(products.add_plain(self.peer, ct, ut, scale))
        out = self.rows_entry(rows)
        for i, ct in enumerate(
            products.diag_products(self.peer, self.geo.bwd, cts, self._delta, scale)
        ):
            out[f"dx/{i}"] = products.finish(self.peer, ct, self.params.dx_noise)
        self._v_cts = None
        return out

    def weight_gradient(self, msg: Message) -> Message:
        """Enc_C(X) -> Enc_C(λ(Xᵀδ + M)) per packing part, masked per group; steps U (see
        shares.HostShare) and appends Enc_H(U) of the next step."""
        if self._delta is None:
            raise SecureProtocolError("weight_gradient before backward")
        plan, rows, p = self.geo.gram, self._rows, self.params
        names = {tp: self.names(f"x/{tp}", plan.x_cts(rows)) for tp in range(plan.t_parts)}
        all_names = [n for part in names.values() for n in part]
        checks.expect_names(msg, ["rows", *all_names], KIND_ENC_X)
        if checks.rows_of(msg, KIND_ENC_X) != rows:
            raise SecureProtocolError(f"{KIND_ENC_X}: row count differs from the forward pass")
        x_scale = 2.0**p.x_scale_bits
        x_cts = {
            tp: self.load(self.peer.engine, msg, n, KIND_ENC_X, 2, x_scale)
            for tp, n in names.items()
        }
        mask = self._require_share().next_mask() * p.lam
        bound = p.partial_mask(plan.rows_per_group(rows))
        noise = p.g_noise / np.sqrt(plan.groups)
        out = self.rows_entry(rows)
        for tp in range(plan.t_parts):
            for jp in range(plan.j_parts):
                ct = products.gram_product(
                    self.peer, plan, x_cts[tp], self._delta, jp, 2.0**p.gram_scale_bits
                )
                masks = products.zero_sum_masks(plan, bound)
                masks[: plan.group] += self._mask_block(mask, tp, jp).ravel()
                products.add_plain(self.peer, ct, masks, ct.scale)
                out[f"y/{tp}/{jp}"] = products.finish(self.peer, ct, noise)
        self._delta = None
        out.update(self.share_message())
        return out

    def _mask_block(self, mask: np.ndarray, tp: int, jp: int) -> np.ndarray:
        """λM for one packing part, as the (h_part, o_part) complex block of group 0."""
        plan = self.geo.gram
        block = np.zeros((plan.h_part, plan.o_part), dtype=np.complex128)
        j0 = jp * plan.o_part
        cols = slice(j0, min(self.out_dim, j0 + plan.o_part))
        width = cols.stop - cols.start
        for i in range(plan.h_part):
            t = tp * plan.h_part + i
            if t < self.in_dim:
                block[i, :width] += mask[t, cols]
            if t + plan.h < self.in_dim:
                block[i, :width] += 1j * mask[t + plan.h, cols]
        return block

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """U, its momentum buffer and its re-sharing state (keys are never saved)."""
        return {k: torch.from_numpy(v.copy()) for k, v in self._require_share().state().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = ("u", "buf", "u0", "slow")
        self.check_state_shapes(state, names)
        if self.share is None:
            self.start(state["u"].to(torch.float64).numpy())
        assert self.share is not None
        self.share.load({n: state[n].to(torch.float64).numpy() for n in names})

    def _require_share(self) -> HostShare:
        if self.share is None:
            raise SecureProtocolError("the host's share is not set up yet (no initial exchange)")
        return self.share
