"""The host in secure mode: its own projection in plaintext, each collaborator's through the
CKKS protocol (party_node.secure); `train_a_batch`/`run_test` see projected features only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from party_node.errors import TaskFailed
from party_node.runtime.links import Participant
from party_node.runtime.outputs import atomic_torch_save
from party_node.runtime.roles.host import HostRole
from party_node.runtime.roles.secure_common import (
    SecureExchange,
    protocol_errors,
    secure_bundle_params,
)
from party_node.secure import (
    SecureHostLayer,
    check_feature_width,
    projection_init_bound,
    shape_agreement,
    validate_host_config,
    validate_project_layer_config,
)
from party_node.secure import params as kinds


class SecureHostRole(SecureExchange, HostRole):
    features_kind = kinds.KIND_FWD
    plain_messages = False

    def build_extra(self) -> None:
        super().build_extra()
        s = self.s
        self.init_secure()
        # Shapes and types now; the key set once the participants are known.
        shapes = validate_host_config(s.project_layer_config, s.feature_key)
        in_dim, out_dim = shapes[s.feature_key]
        # The host's own projection is plaintext: bias-free like the secure ones (the
        # inference model after the concatenation has the bias).
        self.projection = nn.Linear(int(in_dim), int(out_dim), bias=False)
        bound = projection_init_bound(int(in_dim))  # same init as the secure projections
        nn.init.uniform_(self.projection.weight, -bound, bound)
        self.projection_optimizer = torch.optim.SGD(
            self.projection.parameters(),
            lr=s.project_layer_lr,
            momentum=s.project_layer_momentum,
        )
        self.shapes: dict[str, tuple[int, int]] = {}
        self.layers: dict[str, SecureHostLayer] = {}
        self.pending_layer_state: dict[str, Any] = {}

    def set_participants(self, participants: Any) -> None:
        super().set_participants(participants)
        self.shapes = validate_project_layer_config(
            self.s.project_layer_config, [p.feature_key for p in self.participants]
        )

    def agreement(self) -> dict[str, str]:
        """The secure settings plus every projection's shape (a collaborator that declares its
        project_layer_shape is checked against it at join)."""
        return {
            **super().agreement(),
            **shape_agreement(
                validate_host_config(self.s.project_layer_config, self.s.feature_key)
            ),
        }

    # ---- once per task: keys and shares ------------------------------------------------------
    def setup(self, round_no: int) -> None:
        """Keys both ways (ours carry each collaborator's (in_dim, out_dim) and whether the
        shares start fresh); fresh shares by the initial exchange; then Enc_H(U) to each."""
        if self.keys is not None:
            return
        steps: set[int] = set()
        for peer in self.collaborators:
            steps |= SecureHostLayer.key_steps(*self.shapes[peer.feature_key], self.params)
        keys = self.make_keys(steps)
        for peer in self.collaborators:
            shape = torch.tensor(self.shapes[peer.feature_key], dtype=torch.int64)
            fresh = torch.tensor(peer.feature_key not in self.pending_layer_state)
            self.send_keys(peer, round_no, shape=shape, fresh=fresh.to(torch.int64))
        for peer in self.collaborators:
            msg = self.expect(peer, kinds.KIND_PUBLIC_KEYS, round_no, 0, self.me)
            in_dim, out_dim = self.shapes[peer.feature_key]
            layer = SecureHostLayer(
                peer.feature_key,
                in_dim,
                out_dim,
                self.s.project_layer_lr,
                self.s.project_layer_momentum,
                keys,
                self.peer_keys(peer, msg),
                self.params,
                dtype=torch.get_default_dtype(),
            )
            if peer.feature_key in self.pending_layer_state:
                layer.load_state_dict(self.pending_layer_state.pop(peer.feature_key))
            else:
                self.reply(peer, kinds.KIND_INIT_SHARE, round_no, 0, layer.init_request())
            self.layers[peer.node_id] = layer
        for peer in self.collaborators:
            layer = self.layers[peer.node_id]
            if layer.share is None:
                msg = self.receive(peer, kinds.KIND_INIT_SHARE, round_no, 0)
                with protocol_errors(peer, "the initial share exchange"):
                    layer.init_finish(msg)
            self.reply(peer, kinds.KIND_SHARE, round_no, 0, layer.share_message())

    def own_projection(self, features: torch.Tensor) -> torch.Tensor:
        in_dim, out_dim = self.shapes[self.s.feature_key]
        check_feature_width(self.s.feature_key, in_dim, out_dim, int(features.shape[1]))
        return self.projection(features.to(self.projection.weight.dtype))

    # ---- training -------------------------------------------------------------------------
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
        leaves = {}
        for peer in self.collaborators:
            msg = self.receive(peer, kinds.KIND_FWD, round_no, b)
            self.check_peer_rows(peer, msg, rows, f"batch {b} of round {round_no}")
            with protocol_errors(peer, f"the forward pass of batch {b}"):
                leaves[peer.node_id] = self.layers[peer.node_id].forward(msg)
            leaves[peer.node_id].requires_grad_(True)
        return leaves

    def zero_grad(self) -> None:
        super().zero_grad()
        self.projection_optimizer.zero_grad(set_to_none=True)

    @contextmanager
    def deliver_gradients(
        self, round_no: int, b: int, leaves: dict[str, torch.Tensor]
    ) -> Iterator[None]:
        """After train_a_batch: the CKKS backward with every collaborator."""
        yield
        started = time.perf_counter()
        self.backward_collaborators(round_no, b, leaves)
        self.observer.he("secure_backward", time.perf_counter() - started)

    def step_optimizers(self) -> None:
        super().step_optimizers()
        self.projection_optimizer.step()

    def backward_collaborators(self, round_no: int, b: int, leaves: dict) -> None:
        """Enc_C(λδ·Wᵀ) with the next Enc_H(U) to every collaborator first (they
        backpropagate and start their next product while we compute the weight gradients),
        then Enc_C(λ(Xᵀδ + M))."""
        where = f"the backward pass of batch {b}"
        for peer in self.collaborators:
            leaf = leaves[peer.node_id]
            delta = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            delta = self.privacy.outgoing(peer.node_id, delta.detach(), self.batch_labels)
            with protocol_errors(peer, where):
                msg = self.layers[peer.node_id].backward(delta.detach())
            self.reply(peer, kinds.KIND_BWD_GRAD, round_no, b, msg)
        for peer in self.collaborators:
            enc_x = self.receive(peer, kinds.KIND_ENC_X, round_no, b)
            with protocol_errors(peer, where):
                out = self.layers[peer.node_id].weight_gradient(enc_x)
            self.reply(peer, kinds.KIND_BWD_WEIGHT, round_no, b, out)

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
            msg = self.receive(peer, kinds.KIND_TEST_FWD, 0, 0)
            self.check_peer_rows(peer, msg, total, "the test set")
            with protocol_errors(peer, "the test forward pass"):
                z = self.layers[peer.node_id].forward(msg, train=False)
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

    def bundle_fields(self, writer: Any) -> dict[str, Any]:
        """Plus the host's own projection and its shares U of the collaborators' (never W)."""
        fields = super().bundle_fields(writer)
        shares = {self.layer_key(n): layer.state_dict()["u"] for n, layer in self.layers.items()}
        fields["projection"] = {
            "host": writer.save_state("host_projection.pt", self.projection.state_dict()),
            "shares": writer.save_state("projection_shares.pt", shares),
            "shapes": {k: list(v) for k, v in sorted(self.shapes.items())},
            "params": secure_bundle_params(self.s, self.params),
        }
        return fields

    def save_final(self, out_dir: Path) -> None:
        super().save_final(out_dir)
        atomic_torch_save(self.projection.state_dict(), out_dir / "host_projection.pt")
        shares = {self.layer_key(n): layer.state_dict()["u"] for n, layer in self.layers.items()}
        atomic_torch_save(shares, out_dir / "projection_shares.pt")
