"""The host's half of the secure projection layer for one collaborator (pure: dicts in/out).

Per training batch: `forward(fwd)` decrypts z = X·W (the collaborator computed it under our
key) and keeps its Enc_C(Vᵀ); the host's model gives δ; `backward(δ)` computes Enc_C(λδ·Wᵀ)
for the collaborator, with our next Enc_H(U) (its path does not depend on the data, so the
collaborator can start its next product early); `weight_gradient(enc_x)` computes
Enc_C(λ(Xᵀδ + M)) on the collaborator's Enc_C(X) and steps U. Test: `forward(test_fwd,
train=False)`. The host decrypts only z; it never sees X, V or W, and returns nothing it
decrypted. Everything that does not depend on the batch (the next step of U's path, its
encryption, the masks, the finishing noise) is made ahead on a worker thread while the host
waits for the collaborator; the rest runs on the caller's thread (TenSEAL's SEAL calls hold
the GIL, so a second thread would only take turns with it).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from party_node.secure import checks, products
from party_node.secure.background import Background, NoisePool, flood_std_per_group
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
from party_node.secure.shares import (
    HostShare,
    ShareStep,
    host_init_half,
    init_bound,
    projection_init_bound,
)


@dataclass
class _Prepared:
    """One batch's data-independent host work, made ahead."""

    u_plain: dict[tuple[int, int], Any]  # U_tᵀ baby copies, encoded for λδ·Wᵀ
    step: ShareStep  # U_{t+1} and M_t
    masks: dict[tuple[int, int], Any]  # per weight-gradient part: group masks + λM, encoded
    mask_rows: int  # rows per group the group masks were sized for
    next_share: Message  # Enc_H(U_{t+1})


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
        self.dtype = dtype
        self.background = Background()
        p = self.params
        self._dx_noise = NoisePool(self.background, self.peer, p.product_scale, p.dx_noise)
        # The weight gradient's flood rides on its mask plaintext (_encode_masks).
        self._g_noise = NoisePool(self.background, self.peer, p.gram_product_scale, 0.0)
        self.share: HostShare | None = None
        self._prepared: Future[_Prepared] | None = None
        self._a: np.ndarray | None = None
        #: Rows of the training forward whose backward is due (None: none is).
        self._rows: int | None = None
        #: That batch's Enc_C(Vᵀ) copies as they came (loaded when δ is known).
        self._v_blobs: Message | None = None
        self._delta: np.ndarray | None = None
        if initial_share is not None:
            self.start(self.check_shape(initial_share, "initial share"))

    @staticmethod
    def key_steps(in_dim: int, out_dim: int, params: SecureParams | None = None) -> set[int]:
        """Rotations the host's own Galois keys must cover (the collaborator folds X·W)."""
        return Geometry(in_dim, out_dim, params or SecureParams()).fwd.key_steps()

    def start(self, u: np.ndarray) -> None:
        self.share = HostShare(u, self.lr, self.momentum, self.params, self.in_dim)
        self._prepare()

    # ---- fresh tasks: W_0 = a ⊙ b without anyone learning it --------------------------------
    def init_request(self) -> Message:
        """Enc_H(a), a ~ U[±sqrt(3/in_dim)] (our factor of W_0)."""
        self._a = host_init_half(self.in_dim, self.out_dim)
        vecs = self.compact_pack(self._a)
        names = self.names("a", len(vecs))
        scale = self.params.share_scale
        return {n: self.own.encrypt_bytes(v, scale) for n, v in zip(names, vecs, strict=True)}

    def init_finish(self, msg: Message) -> None:
        """U_0 = a ⊙ b - V_0 (the collaborator's b and offset V_0 stay unknown to us)."""
        if self._a is None:
            raise SecureProtocolError(f"{KIND_INIT_SHARE} arrived before our request")
        names = self.names("w0", self.compact_count())
        checks.expect_names(msg, names, KIND_INIT_SHARE)
        vecs = self.decrypt(msg, names, KIND_INIT_SHARE, self.share_result_scale)
        u0 = self.compact_unpack(vecs)
        bound = projection_init_bound(self.in_dim) + self.params.share_offset * init_bound(
            self.in_dim
        )
        checks.in_range(u0, bound + 1.0, "initial share")
        self._a = None
        self.start(u0)

    def share_message(self) -> Message:
        """Enc_H(U) (its baby-step copies in the forward packing), for the collaborator."""
        return self._encrypt_share(self._require_share().u)

    def _encrypt_share(self, u: np.ndarray) -> Message:
        plan, names, out = self.geo.fwd, self.u_names(), {}
        for tile, vec in enumerate(plan.pack_b(u)):
            for h, baby in enumerate(plan.babies(vec)):
                out[names[(tile, h)]] = self.own.encrypt_bytes(baby, self.params.share_scale)
        return out

    # ---- work made ahead --------------------------------------------------------------------
    def _prepare(self) -> None:
        self._prepared = self.background.submit(self._make_prepared)

    def _make_prepared(self) -> _Prepared:
        share, p, plan = self._require_share(), self.params, self.geo.bwd
        parms = self.peer.engine.seal_context.first_parms_id()
        u_plain = {
            (tile, h): self.peer.engine.encode(baby, p.share_scale, parms)
            for tile, vec in enumerate(plan.pack_b(share.u.T))
            for h, baby in enumerate(plan.babies(vec))
        }
        step = share.draw()
        mask_rows = self.geo.gram.rows_per_group(p.block_rows)
        masks = self._encode_masks(step.mask, mask_rows)
        return _Prepared(u_plain, step, masks, mask_rows, self._encrypt_share(step.target))

    def _encode_masks(self, mask: np.ndarray, rows_per_group: int) -> dict[tuple[int, int], Any]:
        """Per weight-gradient part: zero-sum group masks sized for `rows_per_group` plus λM
        in group 0, encoded at the product's scale."""
        p, gram = self.params, self.geo.gram
        parms = self.peer.engine.seal_context.first_parms_id()
        bound = p.partial_mask(rows_per_group)
        scale = p.gram_product_scale
        masks = {}
        flood = flood_std_per_group(p.g_noise, gram.groups)
        for tp in range(gram.t_parts):
            for jp in range(gram.j_parts):
                vec = products.zero_sum_masks(gram, bound) + products.gaussian_slots(
                    gram.slots, flood
                )
                vec[: gram.group] += self._mask_block(mask * p.lam, tp, jp).ravel()
                masks[(tp, jp)] = self.peer.engine.encode(vec, scale, parms)
        return masks

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, msg: Message, train: bool = True) -> torch.Tensor:
        """Decrypt z = X·W; for training also keep Enc_C(Vᵀ) for the backward pass."""
        step = KIND_FWD if train else KIND_TEST_FWD
        rows = self.check_rows(msg, step)
        z_names = self.names("z", self.geo.fwd.chunks(rows))
        v_names = list(self.v_names().values()) if train else []
        checks.expect_names(msg, ["rows", *z_names, *v_names], step)
        vecs = self.decrypt(msg, z_names, step, self.share_result_scale)
        z = np.concatenate([self.geo.fwd.unpack(v, rows, i) for i, v in enumerate(vecs)])
        checks.in_range(z, self.params.output_limit, f"projection of '{self.feature_key}'")
        self._delta = None
        self._rows = rows if train else None
        self._v_blobs = {name: msg[name] for name in v_names} if train else None
        return torch.from_numpy(z).to(self.dtype)

    # ---- backward ---------------------------------------------------------------------------
    def backward(self, delta: torch.Tensor) -> Message:
        """δ = ∂L/∂z -> Enc_C(λδ·(U + V)ᵀ) for the collaborator (it decrypts ∂L/∂X), plus
        Enc_H(U) of the next step. δ never leaves."""
        rows = self._rows
        if rows is None or self._v_blobs is None or self._delta is not None:
            raise SecureProtocolError("backward without a pending training forward")
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
        prepared, p, engine = self._require_prepared(), self.params, self.peer.engine
        names = self.v_names()
        cts = self.load(engine, self._v_blobs, list(names.values()), KIND_FWD, 2, p.share_scale)
        w_cts = {}  # Enc_C(Vᵀ) + Uᵀ = Enc_C(Wᵀ), per baby copy
        for key, ct in zip(names, cts, strict=True):
            engine.evaluator.add_plain_inplace(ct, prepared.u_plain[key])
            w_cts[key] = ct
        self._v_blobs = None
        results = products.diag_products(
            self.peer, self.geo.bwd, w_cts, self._delta, p.operand_scale, p.dither(p.operand_scale)
        )
        out = self.rows_entry(rows)
        for i, ct in enumerate(results):
            out[f"dx/{i}"] = products.finish(self.peer, ct, self._dx_noise.take())
        out.update(prepared.next_share)
        return out

    def weight_gradient(self, enc_x: Message) -> Message:
        """Enc_C(X) -> Enc_C(λ(Xᵀδ + M)) per packing part, masked per group; steps U (see
        shares.HostShare)."""
        if self._delta is None or self._rows is None:
            raise SecureProtocolError("weight_gradient before backward")
        out = self._weight_message(self._load_x(enc_x, self._rows), self._require_prepared())
        self._require_share().commit(self._require_prepared().step)
        self._delta = self._rows = None
        self._prepare()  # and the noise: made while we wait for the next batch
        self._dx_noise.refill()
        self._g_noise.refill()
        return out

    def _load_x(self, msg: Message, rows: int) -> dict[int, list[Any]]:
        plan, p = self.geo.gram, self.params
        names = {tp: self.names(f"x/{tp}", plan.x_cts(rows)) for tp in range(plan.t_parts)}
        all_names = [n for part in names.values() for n in part]
        checks.expect_names(msg, ["rows", *all_names], KIND_ENC_X)
        if checks.rows_of(msg, KIND_ENC_X) != rows:
            raise SecureProtocolError(f"{KIND_ENC_X}: row count differs from the forward pass")
        return {
            tp: self.load(self.peer.engine, msg, n, KIND_ENC_X, 2, p.x_scale)
            for tp, n in names.items()
        }

    def _weight_message(self, x_cts: dict[int, list[Any]], prepared: _Prepared) -> Message:
        plan, rows, p = self.geo.gram, self._rows, self.params
        assert rows is not None
        assert self._delta is not None
        masks = prepared.masks
        if plan.rows_per_group(rows) > prepared.mask_rows:  # a batch larger than block_rows
            masks = self._encode_masks(prepared.step.mask, plan.rows_per_group(rows))
        out = self.rows_entry(rows)
        for tp in range(plan.t_parts):
            for jp in range(plan.j_parts):
                ct = products.gram_product(
                    self.peer,
                    plan,
                    x_cts[tp],
                    self._delta,
                    jp,
                    p.gram_scale,
                    p.dither(p.gram_scale),
                )
                self.peer.engine.evaluator.add_plain_inplace(ct, masks[(tp, jp)])
                out[f"y/{tp}/{jp}"] = products.finish(self.peer, ct, self._g_noise.take())
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
            self.share = HostShare(
                state["u"].to(torch.float64).numpy(),
                self.lr,
                self.momentum,
                self.params,
                self.in_dim,
            )
        self.share.load({n: state[n].to(torch.float64).numpy() for n in names})
        self._prepare()

    def close(self) -> None:
        self.background.close()

    def _require_share(self) -> HostShare:
        if self.share is None:
            raise SecureProtocolError("the host's share is not set up yet (no initial exchange)")
        return self.share

    def _require_prepared(self) -> _Prepared:
        if self._prepared is None:
            raise SecureProtocolError("the host's share is not set up yet (no initial exchange)")
        return self._prepared.result()
