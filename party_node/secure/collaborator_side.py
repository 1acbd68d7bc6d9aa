"""The collaborator's half of the secure projection layer (pure: message dicts in and out).

Per training batch: `start_forward(X)` computes X·Enc_H(U) on the host's encrypted share,
flooded, re-randomised and rescaled (the expensive part: it needs only this batch's X, so it
runs before the previous batch's weight gradient is taken); `finish_forward()` adds X·V with
our current share: Enc_H(X·W), and Enc_C(Vᵀ) for the host's backward. `encrypt_features()`
sends Enc_C(X) for the weight gradient; `finish_backward(bwd_grad)` decrypts ∂L/∂X and keeps
the host's next Enc_H(U); `apply_weight_gradient(bwd_weight)` decrypts λ(Xᵀδ + M) and steps V.
`forward(X)` is start and finish at once. The collaborator never sees δ, U or W, and returns
nothing it decrypted.

Work is made ahead on a worker thread only while this party waits for its peer (the finishing
noise, and Enc_C of the part of the next V known before the next gradient: V - η·μ·buf, so
that Enc_C(Vᵀ) is ready one plaintext addition after the step). Everything else runs on the
caller's thread: TenSEAL's SEAL calls hold the GIL, so a second thread would only take turns
with this one (docs/secure-protocol.md, "Speed and bytes").
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from tenseal import sealapi

from party_node.secure import checks, products, seal_io
from party_node.secure.background import Background, NoisePool, noise_ciphertext
from party_node.secure.context import OwnKeys, PeerKeys
from party_node.secure.errors import SecureProtocolError
from party_node.secure.params import (
    KIND_BWD_GRAD,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_INIT_SHARE,
    KIND_SHARE,
    Message,
    SecureParams,
)
from party_node.secure.share_layer import Geometry, ShareLayer
from party_node.secure.shares import (
    CollaboratorShare,
    collaborator_init_half,
    initial_offset,
    secure_uniform,
)


class SecureCollaboratorLayer(ShareLayer):
    """Holds V (the collaborator's share of W) and drives its side of the CKKS protocol."""

    def __init__(
        self,
        feature_key: str,
        in_dim: int,
        out_dim: int,
        lr: float,
        momentum: float,
        own_keys: OwnKeys,
        host_keys: PeerKeys,
        params: SecureParams | None = None,
        initial_share: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__(feature_key, in_dim, out_dim, own_keys, params)
        self.host = host_keys
        self.lr, self.momentum = lr, momentum
        self.background = Background()
        p = self.params
        self._z_noise = NoisePool(self.background, self.host, p.product_scale, p.z_noise)
        self.share: CollaboratorShare | None = None
        #: Enc_C of the next V's known part (its baby copies) and that part, made ahead.
        self._v_ahead: Future[tuple[np.ndarray, dict[tuple[int, int], Any]]] | None = None
        if initial_share is not None:
            self.share = CollaboratorShare(
                self.check_shape(initial_share, "initial share"), lr, momentum
            )
        self._u_cts: dict[tuple[int, int], Any] | None = None
        #: The forward pass begun by start_forward: (X, finished X·Enc_H(U) per chunk, training?).
        self._started: tuple[np.ndarray, list[Any], bool] | None = None
        #: The training batch whose ∂L/∂X is due (its X), and the rows of the batch whose
        #: weight gradient is due (it may arrive after the next batch's start_forward).
        self._x: np.ndarray | None = None
        self._weight_rows: int | None = None
        self._dtype = torch.float32

    @staticmethod
    def key_steps(in_dim: int, out_dim: int, params: SecureParams | None = None) -> set[int]:
        """Rotations our own Galois keys must cover (the host folds λδ·Wᵀ)."""
        return Geometry(in_dim, out_dim, params or SecureParams()).bwd.key_steps()

    # ---- fresh tasks -----------------------------------------------------------------------
    def init_reply(self, msg: Message) -> Message:
        """Enc_H(a) -> Enc_H(a ⊙ b - V_0): W_0 = a ⊙ b, our share V_0 a large fresh offset."""
        names = self.names("a", self.compact_count())
        checks.expect_names(msg, names, KIND_INIT_SHARE)
        p = self.params
        cts = self.load(self.host.engine, msg, names, KIND_INIT_SHARE, 2, p.share_scale)
        b = collaborator_init_half(self.in_dim, self.out_dim)
        v0 = initial_offset(self.in_dim, self.out_dim, self.params)
        ev, out = self.host.engine.evaluator, {}
        for name, ct, bv, vv in zip(
            self.names("w0", len(cts)),
            cts,
            self.compact_pack(b),
            self.compact_pack(v0),
            strict=True,
        ):
            prod = sealapi.Ciphertext()
            b_dithered = bv + secure_uniform(bv.size, p.dither(p.operand_scale))
            ev.multiply_plain(
                ct, self.host.engine.encode(b_dithered, p.operand_scale, ct.parms_id()), prod
            )
            products.add_plain(self.host, prod, -vv, prod.scale)
            noise = noise_ciphertext(self.host, prod.parms_id(), prod.scale, self.params.z_noise)
            out[name] = products.finish(self.host, prod, noise)
        self.share = CollaboratorShare(v0, self.lr, self.momentum)
        return out

    def set_host_share(self, msg: Message, step: str = KIND_SHARE) -> None:
        """Keep the host's Enc_H(U) (its baby-step copies) for the next forward passes."""
        names = self.u_names()
        if step == KIND_SHARE:
            checks.expect_names(msg, names.values(), step)
        missing = [n for n in names.values() if n not in msg]
        if missing:
            raise SecureProtocolError(f"{step}: missing {missing}")
        engine, scale = self.host.engine, self.params.share_scale
        self._u_cts = {
            key: engine.load_ciphertext(checks.blob(msg, name, step), name, 2, scale)
            for key, name in names.items()
        }

    def _v_babies(self, v: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """Vᵀ's baby-step copies in the host's backward packing."""
        bwd = self.geo.bwd
        return {
            (tile, h): baby
            for tile, vec in enumerate(bwd.pack_b(v.T))
            for h, baby in enumerate(bwd.babies(vec))
        }

    def _share_message(self) -> Message:
        """Enc_C(Vᵀ) copies for the current V: the ciphertexts made ahead plus the step's
        plaintext part, or fresh encryptions when nothing was made ahead."""
        share, scale = self._require_share(), self.params.share_scale
        ahead, self._v_ahead = self._v_ahead, None
        names = self.v_names()
        if ahead is None:
            return {
                names[key]: self.own.encrypt_bytes(baby, scale)
                for key, baby in self._v_babies(share.v).items()
            }
        base, cts = ahead.result()
        return {
            names[key]: seal_io.save_bytes(products.add_plain(self.own, cts[key], baby, scale))
            for key, baby in self._v_babies(share.v - base).items()
        }

    def _encrypt_ahead(self, base: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int], Any]]:
        scale = self.params.share_scale
        return base, {key: self.own.encrypt(b, scale) for key, b in self._v_babies(base).items()}

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, train: bool = True) -> Message:
        """Enc_H(X·(U + V)) per chunk of rows (start_forward and finish_forward at once)."""
        self.start_forward(x, train)
        return self.finish_forward()

    def start_forward(self, x: torch.Tensor, train: bool = True) -> None:
        """X·Enc_H(U) per chunk of rows on the host's share we hold, finished but for X·V."""
        self._require_share()
        if self._u_cts is None:
            raise SecureProtocolError("forward before the host's share arrived")
        if self._started is not None or (train and self._x is not None):
            raise SecureProtocolError("a forward pass began before the last one finished")
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise SecureProtocolError(
                f"'{self.feature_key}' feature tensor has shape {list(x.shape)}, "
                f"expected (rows, {self.in_dim})"
            )
        self._dtype = x.dtype if x.is_floating_point() else torch.float32
        xs = x.detach().cpu().to(torch.float64).numpy()
        checks.in_range(
            xs,
            self.params.feature_bound,
            f"'{self.feature_key}' feature tensor",
            "raise project_layer_feature_bound at every party",
        )
        p = self.params
        results = products.diag_products(
            self.host, self.geo.fwd, self._u_cts, xs, p.operand_scale, p.dither(p.operand_scale)
        )
        noise = self._z_noise
        finished = [products.flood_and_rescale(self.host, ct, noise.take()) for ct in results]
        self._started = (xs, finished, train)

    def finish_forward(self) -> Message:
        """+ X·V with our current share (so the previous batch's weight step must be in), at
        the finished product's level and scale: Enc_H(X·W); plus Enc_C(Vᵀ) when training."""
        if self._started is None:
            raise SecureProtocolError("finish_forward without start_forward")
        if self._weight_rows is not None:
            raise SecureProtocolError(
                f"the forward pass needs the weight gradient of the previous batch first "
                f"({KIND_BWD_WEIGHT} not applied)"
            )
        (xs, results, train), self._started = self._started, None
        own_part = xs @ self._require_share().v
        out = self.rows_entry(xs.shape[0])
        for i, ct in enumerate(results):
            products.add_plain_in_parts(
                self.host, ct, self.geo.fwd.pack_output(own_part, i), self.params.output_limit
            )
            out[f"z/{i}"] = seal_io.save_bytes(ct)
        if train:
            out.update(self._share_message())
            self._x, self._weight_rows = xs, xs.shape[0]
        else:  # test and serving: no wait of ours to fill, make the noise now
            self._z_noise.refill()
        return out

    def encrypt_features(self) -> Message:
        """Enc_C(X) broadcast over the output columns, for the host's Xᵀδ (sent after z: the
        host needs it only after λδ·Wᵀ). Then, while we wait for the host, the worker makes
        the next batch's noise and Enc_C of the next share's known part."""
        msg = self._encrypt_x(self._require_x(KIND_ENC_X))
        self._z_noise.refill()
        self._v_ahead = self.background.submit(self._encrypt_ahead, self._require_share().ahead())
        return msg

    def _encrypt_x(self, x: np.ndarray) -> Message:
        plan, out = self.geo.gram, self.rows_entry(x.shape[0])
        scale = self.params.x_scale
        for tp in range(plan.t_parts):
            vecs = plan.pack_x(x, tp)
            for name, vec in zip(self.names(f"x/{tp}", len(vecs)), vecs, strict=True):
                out[name] = self.own.encrypt_bytes(vec, scale)
        return out

    # ---- backward ---------------------------------------------------------------------------
    def finish_backward(self, msg: Message) -> torch.Tensor:
        """Decrypt λδ·Wᵀ: ∂L/∂X, the only gradient the collaborator learns; keep the host's
        Enc_H(U) of the next step (its path does not depend on the data, so it comes early)."""
        x = self._require_x(KIND_BWD_GRAD)
        rows = x.shape[0]
        names = self.names("dx", self.geo.bwd.chunks(rows))
        checks.expect_names(msg, ["rows", *names, *self.u_names().values()], KIND_BWD_GRAD)
        if checks.rows_of(msg, KIND_BWD_GRAD) != rows:
            raise SecureProtocolError(f"{KIND_BWD_GRAD}: row count differs from the forward pass")
        vecs = self.decrypt(msg, names, KIND_BWD_GRAD, self.share_result_scale)
        scaled = np.concatenate([self.geo.bwd.unpack(v, rows, i) for i, v in enumerate(vecs)])
        checks.in_range(scaled, self.params.output_limit, "gradient w.r.t. features")
        self.set_host_share(msg, KIND_BWD_GRAD)
        self._x = None
        return torch.from_numpy(scaled / self.params.lam).to(self._dtype)

    def apply_weight_gradient(self, msg: Message) -> None:
        """Decrypt λ(Xᵀδ + M) (summing the groups), step V."""
        if self._weight_rows is None:
            raise SecureProtocolError(
                f"{KIND_BWD_WEIGHT} arrived out of order (no weight gradient is due)"
            )
        plan = self.geo.gram
        names = {
            (tp, jp): f"y/{tp}/{jp}" for tp in range(plan.t_parts) for jp in range(plan.j_parts)
        }
        checks.expect_names(msg, ["rows", *names.values()], KIND_BWD_WEIGHT)
        if checks.rows_of(msg, KIND_BWD_WEIGHT) != self._weight_rows:
            raise SecureProtocolError(f"{KIND_BWD_WEIGHT}: row count differs from the forward pass")
        sums = {}
        for key, name in names.items():
            (vec,) = self.decrypt(msg, [name], KIND_BWD_WEIGHT, self.gram_result_scale)
            checks.in_range(np.abs(vec), self.params.gram_limit, f"decrypted '{name}'")
            sums[key] = plan.group_sum(vec)
        y = plan.place(np.zeros((self.in_dim, self.out_dim)), sums)
        checks.in_range(y, self.params.gram_limit, "masked weight gradient")
        self._require_share().step(y / self.params.lam)
        self._weight_rows = None

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """V and its momentum buffer (keys are never checkpointed)."""
        share = self._require_share()
        return {"v": torch.from_numpy(share.v.copy()), "buf": torch.from_numpy(share.buf.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_state_shapes(state, ("v", "buf"))
        share = CollaboratorShare(state["v"].to(torch.float64).numpy(), self.lr, self.momentum)
        share.buf = state["buf"].to(torch.float64).numpy().copy()
        self.share = share

    def close(self) -> None:
        self.background.close()

    # ---- helpers ----------------------------------------------------------------------------
    def _require_share(self) -> CollaboratorShare:
        if self.share is None:
            raise SecureProtocolError("our share is not set up yet (no initial exchange)")
        return self.share

    def _require_x(self, step: str) -> np.ndarray:
        if self._x is None:
            raise SecureProtocolError(f"{step} arrived out of order (no training batch pending)")
        return self._x
