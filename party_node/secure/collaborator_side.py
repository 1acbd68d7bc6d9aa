"""The collaborator's half of the secure projection layer (pure: message dicts in and out).

Per training batch: `encrypt_features` -> (host) -> `combine_forward` -> (host) -> `backward`
-> (host) -> `apply_weight_gradient` -> (host) -> `finish_backward`.
Test: `encrypt_features(x, train=False)` -> (host) -> `combine_forward`.
The collaborator never sees δ, U or W, only masked values.
"""

from __future__ import annotations

import numpy as np
import torch

from party_node.secure import checks
from party_node.secure.context import OwnKeys, PeerKeys
from party_node.secure.errors import SecureProtocolError
from party_node.secure.params import (
    KIND_BWD_ENC,
    KIND_BWD_GRAD,
    KIND_BWD_MASKED,
    KIND_BWD_WEIGHT,
    KIND_FWD_SHARE,
    Message,
    SecureParams,
)
from party_node.secure.share_layer import ShareLayer, geometry
from party_node.secure.shares import CollaboratorShare


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
        self.share = CollaboratorShare(self.initial_share(initial_share), lr, momentum)
        self._x: np.ndarray | None = None
        self._train = False
        self._noise: np.ndarray | None = None
        self._weight_pending = False
        self._dtype = torch.float32

    @staticmethod
    def key_steps(in_dim: int, out_dim: int, params: SecureParams | None = None) -> set[int]:
        """Rotation steps the collaborator's own Galois keys must cover."""
        return geometry(in_dim, out_dim, params).collaborator_key_steps()

    # ---- forward --------------------------------------------------------------------------
    def encrypt_features(self, x: torch.Tensor, train: bool = True) -> Message:
        """Enc_C(X), packed column-wise; X stays here for X·V and the gradient step."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise SecureProtocolError(
                f"'{self.feature_key}' feature tensor has shape {list(x.shape)}, "
                f"expected (rows, {self.in_dim})"
            )
        self._dtype = x.dtype if x.is_floating_point() else torch.float32
        xs = x.detach().cpu().to(torch.float64).numpy()
        checks.in_range(xs, self.params.value_bound, f"'{self.feature_key}' feature tensor")
        self._x, self._train, self._noise, self._weight_pending = xs, train, None, False
        msg: Message = {"rows": torch.tensor(xs.shape[0], dtype=torch.int64)}
        for (r, c), vec in self.geo.pack(xs).items():
            msg[f"enc_x/{r}/{c}"] = self.own.encrypt_bytes(vec)
        return msg

    def combine_forward(self, msg: Message) -> Message:
        """Decrypt X·U + R, add X·V: the host learns z after removing R, nothing more."""
        x = self._require_x(KIND_FWD_SHARE)
        rows = x.shape[0]
        tiles = self.tile_names("fwd", rows, self.out_dim)
        checks.expect_names(msg, tiles.values(), KIND_FWD_SHARE)
        masked = self.geo.unpack(self.decrypt_tiles(msg, tiles, "decrypt"), rows, self.out_dim)
        z_masked = masked + x @ self.share.v
        if not self._train:
            self._x = None
        return {"z_masked": torch.from_numpy(z_masked)}

    # ---- backward -------------------------------------------------------------------------
    def backward(self, msg: Message) -> Message:
        """Enc_H(λδ) -> Enc_H(λδ·Vᵀ + N), with V before this batch's step."""
        x = self._require_x(KIND_BWD_MASKED)
        if not self._train or self._noise is not None:
            raise SecureProtocolError("backward after a test forward or twice for one batch")
        rows = x.shape[0]
        delta_tiles = self.tile_names("enc_delta", rows, self.out_dim)
        checks.expect_names(msg, ["rows", *delta_tiles.values()], KIND_BWD_MASKED)
        if checks.rows_of(msg, KIND_BWD_MASKED) != rows:
            raise SecureProtocolError(f"{KIND_BWD_MASKED}: row count differs from the forward pass")
        cts = self.load_tiles(self.host, msg, delta_tiles, KIND_BWD_MASKED)
        # V before this batch's step, transposed: δ-blocks in, X-columns out.
        tiles, masks = self.masked_matmul(self.host, cts, self.share.v.T, rows, "grad_x")
        out: Message = {"rows": torch.tensor(rows, dtype=torch.int64), **tiles}
        self._noise = self.geo.unpack(masks, rows, self.in_dim) / 2.0**self.params.delta_scale_bits
        self._weight_pending = True
        return out

    def apply_weight_gradient(self, msg: Message) -> None:
        """Decrypt Xᵀδ + M and step V (SGD with momentum on the share)."""
        x = self._require_x(KIND_BWD_WEIGHT)
        if not self._weight_pending:
            raise SecureProtocolError(f"{KIND_BWD_WEIGHT} arrived before {KIND_BWD_ENC}")
        grad_tiles = {
            (c, j): f"grad_w/{c}/{j}"
            for c in range(self.geo.col_tiles(self.in_dim))
            for j in range(-(-self.out_dim // self.geo.wrap))
        }
        checks.expect_names(msg, ["rows", *grad_tiles.values()], KIND_BWD_WEIGHT)
        if checks.rows_of(msg, KIND_BWD_WEIGHT) != x.shape[0]:
            raise SecureProtocolError(f"{KIND_BWD_WEIGHT}: row count differs from the forward pass")
        self.share.step(self._masked_weight_gradient(msg, grad_tiles))
        self._weight_pending = False

    def finish_backward(self, msg: Message) -> torch.Tensor:
        """Remove N from δ·Wᵀ + N: ∂L/∂X, the only gradient the collaborator learns."""
        x = self._require_x("secure.bwd_grad")
        if self._noise is None:
            raise SecureProtocolError("secure.bwd_grad arrived before secure.bwd_enc")
        if self._weight_pending:
            raise SecureProtocolError(f"{KIND_BWD_GRAD} arrived before {KIND_BWD_WEIGHT}")
        checks.expect_names(msg, ["dx_masked"], "secure.bwd_grad")
        masked = checks.tensor(msg, "dx_masked", x.shape, "secure.bwd_grad")
        grad = checks.in_range(
            masked - self._noise, self.params.value_bound, "gradient w.r.t. features"
        )
        self._x, self._noise = None, None
        return torch.from_numpy(grad).to(self._dtype)

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """V and its momentum buffer (keys are never checkpointed)."""
        return {
            "v": torch.from_numpy(self.share.v.copy()),
            "buf": torch.from_numpy(self.share.buf.copy()),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_state_shapes(state, ("v", "buf"))
        self.share.v = state["v"].to(torch.float64).numpy().copy()
        self.share.buf = state["buf"].to(torch.float64).numpy().copy()

    # ---- helpers --------------------------------------------------------------------------
    def _require_x(self, step: str) -> np.ndarray:
        if self._x is None:
            raise SecureProtocolError(f"{step} arrived out of order (no features pending)")
        return self._x

    def _masked_weight_gradient(
        self, msg: Message, tiles: dict[tuple[int, int], str]
    ) -> np.ndarray:
        """Xᵀδ + M, read from the gram layout (column t of X, output j at slot t*stride + j)."""
        geo, y = self.geo, np.zeros((self.in_dim, self.out_dim))
        for (c, j), vec in self.decrypt_tiles(msg, tiles, "decrypt").items():
            c0, c1 = geo.col_range(c, self.in_dim)
            j0, j1 = j * geo.wrap, min(self.out_dim, (j + 1) * geo.wrap)
            for t, col in enumerate(range(c0, c1)):
                y[col, j0:j1] = vec[t * geo.stride : t * geo.stride + (j1 - j0)]
        return y
