"""What both halves of one collaborator's projection share: its shape, the agreed parameters,
the packing geometry, and the tile loops that load, multiply and decrypt packed ciphertexts.

`SecureHostLayer` and `SecureCollaboratorLayer` derive from `ShareLayer`, so the two sides
cannot drift apart on how a tile is named, packed or bounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from party_node.secure import checks, he_linear, seal_io
from party_node.secure.context import OwnKeys, PeerKeys
from party_node.secure.layout import Geometry
from party_node.secure.params import Message, SecureParams
from party_node.secure.shares import half_init

Tiles = dict[tuple[int, int], str]


def geometry(in_dim: int, out_dim: int, params: SecureParams | None = None) -> Geometry:
    """The packing both parties derive (never send) for an (in_dim, out_dim) projection."""
    p = params or SecureParams()
    return Geometry(p.ckks.slots, in_dim, out_dim, p.block_rows)


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
        self.geo = geometry(in_dim, out_dim, self.params)
        self.own = own_keys

    def initial_share(self, given: np.ndarray | torch.Tensor | None) -> np.ndarray:
        """A fresh half-init share, or the given one if it has the layer's shape."""
        share = half_init(self.in_dim, self.out_dim) if given is None else np.asarray(given)
        if share.shape != (self.in_dim, self.out_dim):
            raise ValueError(
                f"initial share has shape {share.shape}, expected {(self.in_dim, self.out_dim)}"
            )
        return share

    def check_state_shapes(self, state: dict[str, torch.Tensor], names: tuple[str, ...]) -> None:
        """A checkpoint's share tensors must have the layer's (in_dim, out_dim)."""
        for name in names:
            if tuple(state[name].shape) != (self.in_dim, self.out_dim):
                raise ValueError(f"checkpoint '{name}' has shape {list(state[name].shape)}")

    # ---- tiles ----------------------------------------------------------------------------
    def tile_names(self, prefix: str, rows: int, cols: int) -> Tiles:
        """Message entry names of a packed (rows x cols) matrix, by (row tile, column tile)."""
        return {
            (r, c): f"{prefix}/{r}/{c}"
            for r in range(self.geo.row_tiles(rows))
            for c in range(self.geo.col_tiles(cols))
        }

    @staticmethod
    def load_tiles(keys: PeerKeys, msg: Message, tiles: Tiles, step: str) -> dict:
        """The peer's ciphertexts named by `tiles`, loaded against the peer's context."""
        return {
            k: keys.engine.load_ciphertext(checks.blob(msg, n, step), n, 0)
            for k, n in tiles.items()
        }

    def masked_matmul(
        self, keys: PeerKeys, cts: dict, weight: np.ndarray, rows: int, prefix: str
    ) -> tuple[Message, dict[tuple[int, int], np.ndarray]]:
        """Enc(A)·weight + fresh masks, tile by tile: the masked product and the masks.

        `cts` holds A's (row tile, column tile) ciphertexts under the peer's keys; `weight`
        is (k x n), so the result has n columns, named `prefix/r/o`."""
        geo = self.geo
        k_dim, n_dim = weight.shape
        plan = geo.matmul_plan(k_dim, n_dim)
        out: Message = {}
        masks: dict[tuple[int, int], np.ndarray] = {}
        for r in range(geo.row_tiles(rows)):
            for o in range(geo.col_tiles(n_dim)):
                o0, o1 = geo.col_range(o, n_dim)
                acc = None
                for c in range(geo.col_tiles(k_dim)):
                    c0, c1 = geo.col_range(c, k_dim)
                    term = he_linear.block_matmul(
                        keys, geo, cts[(r, c)], weight[c0:c1, o0:o1], plan
                    )
                    acc = term if acc is None else accumulate(keys, acc, term)
                masks[(r, o)] = he_linear.add_mask(keys, acc, self.params.mask_bound)
                out[f"{prefix}/{r}/{o}"] = seal_io.save_bytes(acc)
        return out, masks

    def decrypt_tiles(self, msg: Message, tiles: Tiles, step: str) -> dict:
        """Decrypt our own ciphertexts; each slot must be within the mask plus value bound."""
        bound = self.params.mask_bound + self.params.value_bound
        out = {}
        for key, name in tiles.items():
            ct = self.own.engine.load_ciphertext(checks.blob(msg, name, step), name, 0)
            out[key] = checks.in_range(self.own.decrypt(ct), bound, f"decrypted '{name}'")
        return out


def accumulate(keys: PeerKeys, acc: Any, term: Any) -> Any:
    """acc += term in place (same keys, same level); returns acc."""
    keys.engine.evaluator.add_inplace(acc, term)
    return acc
