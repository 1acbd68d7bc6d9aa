"""The collaborator in secure mode: its features leave only encrypted; it holds its share V
of its projection and learns only ∂L/∂X (party_node.secure)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from party_node.errors import ConfigError
from party_node.runtime.outputs import atomic_torch_save
from party_node.runtime.roles.base import check_features, evaluating
from party_node.runtime.roles.collaborator import CollaboratorRole
from party_node.runtime.roles.secure_common import SecureExchange, protocol_errors
from party_node.secure import SecureCollaboratorLayer, check_feature_width
from party_node.secure import params as kinds


class SecureCollaboratorRole(SecureExchange, CollaboratorRole):
    features_kind = kinds.KIND_ENC_X

    def build_extra(self) -> None:
        self.init_secure()
        self.layer: SecureCollaboratorLayer | None = None
        self.pending_layer_state: dict[str, Any] | None = None

    # ---- once per task: keys ------------------------------------------------------------
    def setup(self, round_no: int, width: int) -> SecureCollaboratorLayer:
        """Take the host's public keys and this party's (in_dim, out_dim); send ours."""
        if self.layer is not None:
            self.check_width(self.layer.in_dim, self.layer.out_dim, width)
            return self.layer
        host = self.host
        msg = self.expect(host, kinds.KIND_PUBLIC_KEYS, round_no, 0, self.me)
        shape = msg.tensors.get("shape")
        if shape is None or shape.numel() != 2:
            raise ConfigError(f"host '{host.node_id}' sent no projection shape for this party")
        in_dim, out_dim = (int(v) for v in shape.tolist())
        self.check_width(in_dim, out_dim, width)
        host_keys = self.peer_keys(host, msg)
        keys = self.make_keys(SecureCollaboratorLayer.key_steps(in_dim, out_dim, self.params))
        self.send_keys(host, round_no)
        s = self.s
        self.layer = SecureCollaboratorLayer(
            s.feature_key,
            in_dim,
            out_dim,
            s.project_layer_lr,
            s.project_layer_momentum,
            keys,
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

    # ---- training -------------------------------------------------------------------------
    #: One batch at a time: the CKKS layer holds one batch's protocol state (X, masks), so
    #: batches cannot overlap yet; a pipelined task still sends without waiting for each
    #: message's acknowledgement (docs/performance.md, "Secure mode").
    batch_depth = 1

    def send_batch(self, round_no: int, b: int, features: torch.Tensor, what: str) -> None:
        """Nothing yet: the whole exchange runs in `receive_gradient`."""

    def receive_gradient(
        self, round_no: int, b: int, features: torch.Tensor, what: str
    ) -> torch.Tensor:
        """Batch b through the protocol: Enc(X) out, masked shares both ways; ∂L/∂X back."""
        host = self.host
        if features.dim() != 2:
            raise ConfigError(f"{what} must yield (rows, columns) features in secure mode")
        layer = self.setup(round_no, int(features.shape[1]))
        where = f"the forward pass of batch {b}"
        started = time.perf_counter()
        with protocol_errors(host, where):
            enc = layer.encrypt_features(features.detach())
        self.observer.he("encrypt_features", time.perf_counter() - started)
        self.reply(host, kinds.KIND_ENC_X, round_no, b, enc)
        forward = (kinds.KIND_FWD_MASKED, kinds.KIND_FWD_SHARE)
        self.step(host, forward, round_no, b, layer.combine_forward, where)
        where = f"the backward pass of batch {b}"
        backward = (kinds.KIND_BWD_ENC, kinds.KIND_BWD_MASKED)
        self.step(host, backward, round_no, b, layer.backward, where)
        msg = self.receive(host, kinds.KIND_BWD_WEIGHT, round_no, b)
        with protocol_errors(host, where):
            layer.apply_weight_gradient(msg)
        msg = self.receive(host, kinds.KIND_BWD_GRAD, round_no, b)
        with protocol_errors(host, where):
            return layer.finish_backward(msg)

    # ---- evaluation -----------------------------------------------------------------------
    def test(self, round_no: int) -> dict[str, float]:
        s = self.s
        host = self.host
        with evaluating(s.feature_model):
            parts = [
                check_features(item, "iterate_test_feature") for _, item in self.test_batches()
            ]
        if not parts:
            raise ConfigError("iterate_test_feature yielded no batches; check test_ids/batch_size")
        features = torch.cat(parts)
        layer = self.setup(int(s.current_round), int(features.shape[1]))
        with protocol_errors(host, "the test forward pass"):
            enc = layer.encrypt_features(features, train=False)
        self.reply(host, kinds.KIND_TEST_ENC_X, 0, 0, enc)
        kind_pair = (kinds.KIND_TEST_FWD_MASKED, kinds.KIND_TEST_FWD_SHARE)
        self.step(host, kind_pair, 0, 0, layer.combine_forward, "the test forward pass")
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
