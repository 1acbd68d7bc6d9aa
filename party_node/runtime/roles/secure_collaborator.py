"""The collaborator in secure mode: its features leave only encrypted; it holds its share V
of its projection and learns only ∂L/∂X (party_node.secure)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from party_node.runtime.errors import ConfigError
from party_node.runtime.links import Message
from party_node.runtime.outputs import atomic_torch_save
from party_node.runtime.roles.base import check_features
from party_node.runtime.roles.collaborator import CollaboratorRole
from party_node.runtime.roles.secure_common import agreement, from_link, protocol_errors, to_link
from party_node.secure import (
    KIND_BWD_ENC,
    KIND_BWD_GRAD,
    KIND_BWD_MASKED,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD_MASKED,
    KIND_FWD_SHARE,
    KIND_PUBLIC_KEYS,
    KIND_TEST_ENC_X,
    KIND_TEST_FWD_MASKED,
    KIND_TEST_FWD_SHARE,
    OwnKeys,
    PeerKeys,
    SecureCollaboratorLayer,
    SecureParams,
    check_feature_width,
)


class SecureCollaboratorRole(CollaboratorRole):
    def build_extra(self) -> None:
        self.params = SecureParams()
        self.layer: SecureCollaboratorLayer | None = None
        self.keys: OwnKeys | None = None
        self.pending_layer_state: dict[str, Any] | None = None

    def agreement(self) -> dict[str, str]:
        return {**super().agreement(), **agreement(self.s, self.params)}

    # ---- once per task: keys ------------------------------------------------------------
    def setup(self, round_no: int, width: int) -> SecureCollaboratorLayer:
        """Take the host's public keys and this party's (in_dim, out_dim); send ours."""
        if self.layer is not None:
            self.check_width(self.layer.in_dim, self.layer.out_dim, width)
            return self.layer
        host = self.host
        msg = self.expect(host, KIND_PUBLIC_KEYS, round_no, 0, "this collaborator")
        shape = msg.tensors.get("shape")
        if shape is None or shape.numel() != 2:
            raise ConfigError(f"host '{host.node_id}' sent no projection shape for this party")
        in_dim, out_dim = (int(v) for v in shape.tolist())
        self.check_width(in_dim, out_dim, width)
        with protocol_errors(host, "the key exchange"):
            host_keys = PeerKeys(self.params.ckks, msg.blobs)
        steps = SecureCollaboratorLayer.key_steps(in_dim, out_dim, self.params)
        self.keys = OwnKeys(self.params.ckks, steps)
        self.peers.send(
            host.node_id, Message(KIND_PUBLIC_KEYS, round_no, 0, blobs=self.keys.public_blobs())
        )
        s = self.s
        self.layer = SecureCollaboratorLayer(
            s.feature_key,
            in_dim,
            out_dim,
            s.project_layer_lr,
            s.project_layer_momentum,
            self.keys,
            host_keys,
            self.params,
        )
        if self.pending_layer_state is not None:
            self.layer.load_state_dict(self.pending_layer_state)
            self.pending_layer_state = None
        return self.layer

    def check_width(self, in_dim: int, out_dim: int, width: int) -> None:
        with protocol_errors(self.host, "the configuration check"):
            check_feature_width(self.s.feature_key, in_dim, out_dim, width)

    def step(self, kind_in: str, kind_out: str, round_no: int, b: int, fn: Any, what: str) -> None:
        host = self.host
        msg = from_link(self.expect(host, kind_in, round_no, b, "this collaborator"))
        with protocol_errors(host, what):
            out = fn(msg)
        self.peers.send(host.node_id, to_link(kind_out, round_no, b, out))

    # ---- training -------------------------------------------------------------------------
    def train_round(self, round_no: int) -> dict[str, Any]:
        s = self.s
        host = self.host
        s.feature_model.train()
        what = f"iterate_train_feature in round {round_no}"
        count = 0
        for b, item in self.batches(s.iterate_train_feature(s.feature_model, self.train_ids), what):
            features = check_features(item, what)
            if features.dim() != 2:
                raise ConfigError(f"{what} must yield (rows, columns) features in secure mode")
            layer = self.setup(round_no, int(features.shape[1]))
            started = time.perf_counter()
            with protocol_errors(host, f"the forward pass of batch {b}"):
                enc = layer.encrypt_features(features.detach())
            self.observer.he("encrypt_features", time.perf_counter() - started)
            self.peers.send(host.node_id, to_link(KIND_ENC_X, round_no, b, enc))
            self.step(
                KIND_FWD_MASKED,
                KIND_FWD_SHARE,
                round_no,
                b,
                layer.combine_forward,
                f"the forward pass of batch {b}",
            )
            self.step(
                KIND_BWD_ENC,
                KIND_BWD_MASKED,
                round_no,
                b,
                layer.backward,
                f"the backward pass of batch {b}",
            )
            msg = from_link(self.expect(host, KIND_BWD_WEIGHT, round_no, b, "this collaborator"))
            with protocol_errors(host, f"the backward pass of batch {b}"):
                layer.apply_weight_gradient(msg)
            msg = from_link(self.expect(host, KIND_BWD_GRAD, round_no, b, "this collaborator"))
            with protocol_errors(host, f"the backward pass of batch {b}"):
                grad = layer.finish_backward(msg)
            self.apply_gradient(features, grad, b)
            self.observer.batch(features.shape[0], "train")
            count = b + 1
        if count == 0:
            raise ConfigError(
                "iterate_train_feature yielded no batches; check train_ids/batch_size"
            )
        self.send_end(host.node_id, KIND_ENC_X, round_no, count)
        return {}

    # ---- evaluation -----------------------------------------------------------------------
    def test(self, round_no: int) -> dict[str, float]:
        s = self.s
        host = self.host
        s.feature_model.eval()
        try:
            with torch.no_grad():
                parts = [
                    check_features(item, "iterate_test_feature")
                    for _, item in self.batches(
                        s.iterate_test_feature(s.feature_model, self.test_ids),
                        "iterate_test_feature",
                    )
                ]
        finally:
            s.feature_model.train()
        if not parts:
            raise ConfigError("iterate_test_feature yielded no batches; check test_ids/batch_size")
        features = torch.cat(parts)
        layer = self.setup(int(s.current_round), int(features.shape[1]))
        with protocol_errors(host, "the test forward pass"):
            enc = layer.encrypt_features(features, train=False)
        self.peers.send(host.node_id, to_link(KIND_TEST_ENC_X, 0, 0, enc))
        self.step(
            KIND_TEST_FWD_MASKED,
            KIND_TEST_FWD_SHARE,
            0,
            0,
            layer.combine_forward,
            "the test forward pass",
        )
        return {}

    # ---- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        layer_state = (
            self.layer.state_dict() if self.layer is not None else self.pending_layer_state
        )
        return {**super().state(), "secure_layer": layer_state}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.pending_layer_state = state.get("secure_layer")

    def save_final(self, out_dir: Path) -> None:
        super().save_final(out_dir)
        if self.layer is not None:
            atomic_torch_save({"v": self.layer.state_dict()["v"]}, out_dir / "projection_share.pt")
