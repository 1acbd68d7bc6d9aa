"""The host in secure mode: its own projection in plaintext, each collaborator's through the
CKKS protocol (party_node.secure); `train_a_batch`/`run_test` see projected features only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from party_node.runtime.errors import ConfigError, TaskFailed
from party_node.runtime.links import Message, Participant
from party_node.runtime.outputs import atomic_torch_save
from party_node.runtime.roles.host import FeatureProjection, HostRole
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
    SecureConfigError,
    SecureHostLayer,
    SecureParams,
    check_feature_width,
    validate_project_layer_config,
)


class SecureHostRole(HostRole):
    def build_extra(self) -> None:
        super().build_extra()
        s = self.s
        self.params = SecureParams()
        config = s.project_layer_config
        try:  # shapes and types now; the key set once the participants are known
            shapes = validate_project_layer_config(config, [e[0] for e in config if e])
        except SecureConfigError as exc:
            raise ConfigError(str(exc)) from None
        if s.feature_key not in shapes:
            raise ConfigError(
                f"project_layer_config has no entry for the host's own feature_key "
                f"'{s.feature_key}'; add ('{s.feature_key}', in_dim, out_dim)"
            )
        in_dim, out_dim = shapes[s.feature_key]
        # The host's own projection is plaintext: bias-free like the secure ones (the
        # inference model after the concatenation has the bias).
        self.projection = nn.Linear(int(in_dim), int(out_dim), bias=False)
        self.projection_optimizer = torch.optim.SGD(
            self.projection.parameters(),
            lr=s.project_layer_lr,
            momentum=s.project_layer_momentum,
        )
        self.shapes: dict[str, tuple[int, int]] = {}
        self.layers: dict[str, SecureHostLayer] = {}
        self.keys: OwnKeys | None = None
        self.pending_layer_state: dict[str, Any] = {}

    def agreement(self) -> dict[str, str]:
        return {**super().agreement(), **agreement(self.s, self.params)}

    def set_participants(self, participants: Any) -> None:
        super().set_participants(participants)
        try:
            self.shapes = validate_project_layer_config(
                self.s.project_layer_config, [p.feature_key for p in self.participants]
            )
        except SecureConfigError as exc:
            raise ConfigError(str(exc)) from None

    # ---- once per task: keys ------------------------------------------------------------
    def setup(self, round_no: int) -> None:
        """Send each collaborator the host's public keys and its (in_dim, out_dim); take theirs."""
        if self.keys is not None:
            return
        steps: set[int] = set()
        for peer in self.collaborators:
            steps |= SecureHostLayer.key_steps(*self.shapes[peer.feature_key], self.params)
        self.keys = OwnKeys(self.params.ckks, steps)
        blobs = self.keys.public_blobs()
        for peer in self.collaborators:
            shape = torch.tensor(self.shapes[peer.feature_key], dtype=torch.int64)
            self.peers.send(
                peer.node_id,
                Message(KIND_PUBLIC_KEYS, round_no, 0, tensors={"shape": shape}, blobs=blobs),
            )
        for peer in self.collaborators:
            msg = self.expect(peer, KIND_PUBLIC_KEYS, round_no, 0, "the host")
            with protocol_errors(peer, "the key exchange"):
                peer_keys = PeerKeys(self.params.ckks, msg.blobs)
            in_dim, out_dim = self.shapes[peer.feature_key]
            layer = SecureHostLayer(
                peer.feature_key,
                in_dim,
                out_dim,
                self.s.project_layer_lr,
                self.s.project_layer_momentum,
                self.keys,
                peer_keys,
                self.params,
                dtype=torch.get_default_dtype(),
            )
            if peer.feature_key in self.pending_layer_state:
                layer.load_state_dict(self.pending_layer_state.pop(peer.feature_key))
            self.layers[peer.node_id] = layer

    def own_projection(self, features: torch.Tensor) -> torch.Tensor:
        in_dim, out_dim = self.shapes[self.s.feature_key]
        try:
            check_feature_width(self.s.feature_key, in_dim, out_dim, int(features.shape[1]))
        except SecureConfigError as exc:
            raise ConfigError(str(exc)) from None
        return self.projection(features.to(self.projection.weight.dtype))

    # ---- training -------------------------------------------------------------------------
    def exchange(self, peer: Participant, kind: str, round_no: int, b: int) -> dict:
        return from_link(self.expect(peer, kind, round_no, b, "the host"))

    def reply(self, peer: Participant, kind: str, round_no: int, b: int, msg: dict) -> None:
        self.peers.send(peer.node_id, to_link(kind, round_no, b, msg))

    def check_peer_rows(self, peer: Participant, msg: dict, rows: int, where: str) -> None:
        got = msg.get("rows")
        got = int(got.item()) if isinstance(got, torch.Tensor) and got.numel() == 1 else -1
        if got != rows:
            raise TaskFailed(
                f"collaborator '{peer.node_id}' sent {got} rows for {where}; host batch has "
                f"{rows} rows — both parties must use the same batch_size and ordering"
            )

    def receive_features(self, round_no: int, b: int, rows: int) -> dict[str, torch.Tensor]:
        """The collaborators' projections z = X·W of batch b, as leaves that collect δ."""
        self.setup(round_no)
        for peer in self.collaborators:
            msg = self.exchange(peer, KIND_ENC_X, round_no, b)
            self.check_peer_rows(peer, msg, rows, f"batch {b} of round {round_no}")
            with protocol_errors(peer, f"the forward pass of batch {b}"):
                self.reply(
                    peer, KIND_FWD_MASKED, round_no, b, self.layers[peer.node_id].forward(msg)
                )
        leaves = {}
        for peer in self.collaborators:
            msg = self.exchange(peer, KIND_FWD_SHARE, round_no, b)
            with protocol_errors(peer, f"the forward pass of batch {b}"):
                leaves[peer.node_id] = self.layers[peer.node_id].finish_forward(msg)
            leaves[peer.node_id].requires_grad_(True)
        return leaves

    def train_round(self, round_no: int) -> dict[str, Any]:
        s = self.s
        s.feature_model.train()
        s.infer_model.train()
        batches = self.batches(
            s.iterate_train_feature(s.feature_model, self.train_ids),
            f"iterate_train_feature in round {round_no}",
        )
        count = 0
        for b, item in batches:
            features, labels = self.unpack(item, "iterate_train_feature")
            own = self.own_projection(features)
            leaves = self.receive_features(round_no, b, features.shape[0])
            projection = FeatureProjection({s.feature_key: own})
            projection.update({p.feature_key: leaves[p.node_id] for p in self.collaborators})
            s.feature_optimizer.zero_grad(set_to_none=True)
            self.projection_optimizer.zero_grad(set_to_none=True)
            with self.watchdog.local(f"train_a_batch (round {round_no} batch {b})"):
                s.train_a_batch(projection, labels)
            started = time.perf_counter()
            self.backward_collaborators(round_no, b, leaves)
            self.observer.he("secure_backward", time.perf_counter() - started)
            if s.is_feature_trainable:
                s.feature_optimizer.step()
            self.projection_optimizer.step()
            self.observer.batch(features.shape[0], "train")
            count = b + 1
        if count == 0:
            raise ConfigError(
                "iterate_train_feature yielded no batches; check train_ids/batch_size"
            )
        for peer in self.collaborators:
            self.expect_end(peer, KIND_ENC_X, round_no, count, "the host")
        finished = bool(s.is_task_finished())
        test_now = round_no == 1 or finished or (s.log_rounds > 0 and round_no % s.log_rounds == 0)
        return {"finished": finished, "test_requested": test_now}

    def backward_collaborators(self, round_no: int, b: int, leaves: dict) -> None:
        """Enc_H(δ) out first, so each collaborator computes δ·Vᵀ while the host computes
        its Xᵀδ; then the masked feature gradients back."""
        for peer in self.collaborators:
            leaf = leaves[peer.node_id]
            delta = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            with protocol_errors(peer, f"the backward pass of batch {b}"):
                msg = self.layers[peer.node_id].backward(delta.detach())
            self.reply(peer, KIND_BWD_ENC, round_no, b, msg)
        for peer in self.collaborators:
            with protocol_errors(peer, f"the backward pass of batch {b}"):
                msg = self.layers[peer.node_id].weight_gradient()
            self.reply(peer, KIND_BWD_WEIGHT, round_no, b, msg)
        for peer in self.collaborators:
            msg = self.exchange(peer, KIND_BWD_MASKED, round_no, b)
            with protocol_errors(peer, f"the backward pass of batch {b}"):
                out = self.layers[peer.node_id].finish_backward(msg)
            self.reply(peer, KIND_BWD_GRAD, round_no, b, out)

    # ---- evaluation -----------------------------------------------------------------------
    def collect_test_features(self, projections: list[dict], rows: list[int]) -> None:
        """All test rows of a collaborator in one exchange (forward only)."""
        key = self.s.feature_key
        for proj in projections:
            proj[key] = self.own_projection(proj[key])
        round_no = int(self.s.current_round)
        self.setup(round_no)
        total = sum(rows)
        for peer in self.collaborators:
            msg = self.exchange(peer, KIND_TEST_ENC_X, 0, 0)
            self.check_peer_rows(peer, msg, total, "the test set")
            with protocol_errors(peer, "the test forward pass"):
                out = self.layers[peer.node_id].forward(msg, train=False)
            self.reply(peer, KIND_TEST_FWD_MASKED, 0, 0, out)
        for peer in self.collaborators:
            msg = self.exchange(peer, KIND_TEST_FWD_SHARE, 0, 0)
            with protocol_errors(peer, "the test forward pass"):
                z = self.layers[peer.node_id].finish_forward(msg)
            for proj, part in zip(projections, torch.split(z, rows), strict=True):
                proj[peer.feature_key] = part

    # ---- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        layers = {self.layer_key(n): layer.state_dict() for n, layer in self.layers.items()}
        layers.update(self.pending_layer_state)
        return {
            **super().state(),
            "host_projection": self.projection.state_dict(),
            "host_projection_optimizer": self.projection_optimizer.state_dict(),
            "secure_layers": layers,
        }

    def layer_key(self, node_id: str) -> str:
        return next(p.feature_key for p in self.collaborators if p.node_id == node_id)

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.projection.load_state_dict(state["host_projection"])
        self.projection_optimizer.load_state_dict(state["host_projection_optimizer"])
        self.pending_layer_state = dict(state.get("secure_layers", {}))

    def save_final(self, out_dir: Path) -> None:
        super().save_final(out_dir)
        atomic_torch_save(self.projection.state_dict(), out_dir / "host_projection.pt")
        shares = {self.layer_key(n): layer.state_dict()["u"] for n, layer in self.layers.items()}
        atomic_torch_save(shares, out_dir / "projection_shares.pt")
