"""The collaborator in secure mode: its features leave only encrypted; it holds its share V
of its projection and learns only ∂L/∂X (party_node.secure)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from party_node.errors import ConfigError, TaskFailed
from party_node.runtime.outputs import atomic_torch_save
from party_node.runtime.roles.base import check_features, evaluating
from party_node.runtime.roles.collaborator import CollaboratorRole
from party_node.runtime.roles.secure_common import (
    SecureExchange,
    protocol_errors,
    secure_bundle_params,
)
from party_node.secure import (
    SecureCollaboratorLayer,
    check_feature_width,
    check_reduces_width,
    shape_agreement,
    validate_projection_shape,
)
from party_node.secure import params as kinds


class SecureCollaboratorRole(SecureExchange, CollaboratorRole):
    features_kind = kinds.KIND_FWD
    plain_messages = False

    def build_extra(self) -> None:
        self.init_secure()
        self.layer: SecureCollaboratorLayer | None = None
        self.pending_layer_state: dict[str, Any] | None = None
        #: (round, batch) whose weight gradient has not stepped V yet.
        self.weight_due: tuple[int, int] | None = None

    def agreement(self) -> dict[str, str]:
        """The secure settings, plus our projection's shape if we declared it."""
        shape = validate_projection_shape(self.s.project_layer_shape, self.s.feature_key)
        extra = shape_agreement({self.s.feature_key: shape}) if shape else {}
        return {**super().agreement(), **extra}

    # ---- once per task: keys and shares --------------------------------------------------
    def setup(self, round_no: int, width: int) -> SecureCollaboratorLayer:
        """Take the host's public keys and our (in_dim, out_dim), refuse a projection that
        would reveal X, send our keys; then the initial share exchange (fresh tasks) and the
        host's Enc_H(U)."""
        if self.layer is not None:
            self.check_width(self.layer.in_dim, self.layer.out_dim, width)
            return self.layer
        host = self.host
        msg = self.expect(host, kinds.KIND_PUBLIC_KEYS, round_no, 0, self.me)
        shape, fresh = msg.tensors.get("shape"), msg.tensors.get("fresh")
        if shape is None or shape.numel() != 2 or fresh is None or fresh.numel() != 1:
            raise ConfigError(f"host '{host.node_id}' sent no projection shape for this party")
        in_dim, out_dim = (int(v) for v in shape.tolist())
        self.check_width(in_dim, out_dim, width)
        s = self.s
        with protocol_errors(host, "the configuration check"):
            check_reduces_width(s.feature_key, in_dim, out_dim, s.project_layer_allow_full_width)
        resumed = self.pending_layer_state is not None
        if bool(fresh.item()) == resumed:
            raise TaskFailed(
                f"host '{host.node_id}' {'starts fresh' if resumed else 'resumes'} the secure "
                f"projection but this party {'resumes' if resumed else 'has no checkpoint'}; "
                "restart every party with the same recover setting"
            )
        host_keys = self.peer_keys(host, msg)
        keys = self.make_keys(SecureCollaboratorLayer.key_steps(in_dim, out_dim, self.params))
        self.send_keys(host, round_no)
        layer = SecureCollaboratorLayer(
            s.feature_key,
            in_dim,
            out_dim,
            s.project_layer_lr,
            s.project_layer_momentum,
            keys,
            host_keys,
            self.params,
        )
        if resumed:
            layer.load_state_dict(self.pending_layer_state)
            self.pending_layer_state = None
        else:
            kind_pair = (kinds.KIND_INIT_SHARE, kinds.KIND_INIT_SHARE)
            self.step(host, kind_pair, round_no, 0, layer.init_reply, "the initial share exchange")
        msg = self.receive(host, kinds.KIND_SHARE, round_no, 0)
        with protocol_errors(host, "the initial share exchange"):
            layer.set_host_share(msg)
        self.layer = layer
        return layer

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
        """Batch b: X·Enc_H(U) first, then the previous batch's weight step (its message
        arrived meanwhile), then Enc_H(X·W) and Enc_C(X), Enc_C(Vᵀ) out; ∂L/∂X back."""
        host = self.host
        if features.dim() != 2:
            raise ConfigError(f"{what} must yield (rows, columns) features in secure mode")
        layer = self.setup(round_no, int(features.shape[1]))
        where = f"the forward pass of batch {b}"
        started = time.perf_counter()
        with protocol_errors(host, where):
            layer.start_forward(features.detach())
        self.settle_weight()
        with protocol_errors(host, where):
            fwd = layer.finish_forward()
        self.observer.he("forward", time.perf_counter() - started)
        self.reply(host, kinds.KIND_FWD, round_no, b, fwd)
        with protocol_errors(host, where):
            enc = layer.encrypt_features()
        self.reply(host, kinds.KIND_ENC_X, round_no, b, enc)
        msg = self.receive(host, kinds.KIND_BWD_GRAD, round_no, b)
        with protocol_errors(host, f"the backward pass of batch {b}"):
            grad = layer.finish_backward(msg)
        self.weight_due = (round_no, b)
        return grad

    def settle_weight(self) -> None:
        """Step V with the host's masked weight gradient of the batch it is due for."""
        if self.weight_due is None:
            return
        round_no, b = self.weight_due
        msg = self.receive(self.host, kinds.KIND_BWD_WEIGHT, round_no, b)
        assert self.layer is not None
        with protocol_errors(self.host, f"the backward pass of batch {b}"):
            self.layer.apply_weight_gradient(msg)
        self.weight_due = None

    def after_batch(self, round_no: int, b: int) -> None:
        """A checkpoint holds V after this batch's step."""
        if self.checkpoint_due == (round_no, b):
            self.settle_weight()
        super().after_batch(round_no, b)

    def train_round(self, round_no: int) -> dict[str, Any]:
        """The round's batches; the last batch's weight step before anything reads V."""
        result = super().train_round(round_no)
        self.settle_weight()
        return result

    # ---- evaluation -----------------------------------------------------------------------
    def test(self, round_no: int) -> dict[str, float]:
        s = self.s
        with evaluating(s.feature_model):
            parts = [
                check_features(item, "iterate_test_feature") for _, item in self.test_batches()
            ]
        if not parts:
            raise ConfigError("iterate_test_feature yielded no batches; check test_ids/batch_size")
        features = torch.cat(parts)
        layer = self.setup(int(s.current_round), int(features.shape[1]))
        with protocol_errors(self.host, "the test forward pass"):
            msg = layer.forward(features, train=False)
        self.reply(self.host, kinds.KIND_TEST_FWD, 0, 0, msg)
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

    def bundle_fields(self, writer: Any) -> dict[str, Any]:
        """Plus this party's share V of its projection (the host's share U stays there)."""
        fields = super().bundle_fields(writer)
        if self.layer is not None:
            share = {"v": self.layer.state_dict()["v"]}
            fields["projection"] = {
                "share": writer.save_state("projection_share.pt", share),
                "in_dim": self.layer.in_dim,
                "out_dim": self.layer.out_dim,
                "params": secure_bundle_params(self.s, self.params),
            }
        return fields

    def save_final(self, out_dir: Path) -> None:
        super().save_final(out_dir)
        if self.layer is not None:
            atomic_torch_save({"v": self.layer.state_dict()["v"]}, out_dir / "projection_share.pt")
