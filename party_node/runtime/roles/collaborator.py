"""The collaborator's phases: send each batch's features to the host, apply the gradient
the host returns, send test features. It never sees labels or the inference model."""

from __future__ import annotations

from typing import Any

import torch

from party_node.errors import ConfigError, TaskFailed
from party_node.runtime.links import Message, Participant
from party_node.runtime.roles.base import (
    BUNDLE_DIGEST,
    BUNDLE_PARTIES,
    Role,
    check_features,
    evaluating,
    parse_parties,
)
from party_node.runtime.training_mode import InFlight


class CollaboratorRole(Role):
    #: Who waits on the host, in error messages.
    me = "this collaborator"
    #: The kind each training batch's features go under (and the round ends with).
    features_kind = "train.features"

    @property
    def host(self) -> Participant:
        return next(p for p in self.participants if p.role == "host")

    def psi(self, ids: list[str]) -> set[str]:
        return self.peers.psi_as_collaborator(ids, self.timeout)

    def train_round(self, round_no: int) -> dict[str, Any]:
        """Send each batch's features; apply each gradient once `depth` batches are in flight
        (training_mode: 1, i.e. right away, in exact mode)."""
        s = self.s
        host = self.host
        if self.streams_training:
            self.peers.subscribe(host.node_id, round_no)
        s.feature_model.train()
        what = f"iterate_train_feature in round {round_no}"
        flight = InFlight(self.batch_depth)
        batches = self.train_batches(
            round_no,
            s.iterate_train_feature(s.feature_model, self.train_ids),
            what,
            lambda: flight.keeping_weights(s.feature_model),
        )
        count = self.batches_done
        for b, item in batches:
            features = check_features(item, what)
            self.send_batch(round_no, b, features, what)
            for done in flight.push(b, features):
                self.complete_batch(round_no, *done, what)
                self.after_batch(round_no, done[0])
            self.observer.batch(features.shape[0], "train")
            count = b + 1
        for done in flight.drain():
            self.complete_batch(round_no, *done, what)
            self.after_batch(round_no, done[0])
        if count == 0:
            raise ConfigError(
                "iterate_train_feature yielded no batches; check train_ids/batch_size"
            )
        self.send_end(host.node_id, self.features_kind, round_no, count)
        return {}

    def expect(
        self, peer: Participant, kind: str, round_no: int, batch: int, host_batches: str
    ) -> Message:
        """As Role.expect; a training message the host flagged makes this party checkpoint
        after that batch, as the host does."""
        msg = super().expect(peer, kind, round_no, batch, host_batches)
        if msg.checkpoint and round_no > 0:
            self.checkpoint_due = (round_no, batch)
        return msg

    @property
    def batch_depth(self) -> int:
        """Batches that may await their gradient at once (the training mode's depth)."""
        return self.mode.depth

    def send_batch(self, round_no: int, b: int, features: torch.Tensor, what: str) -> None:
        """Send batch b's features to the host. Exact mode waits on the call for the batch's
        gradient (the host answers on it: one call per batch, and no thread of its own to
        wake here); a blocking call costs no thread either."""
        exact = self.batch_depth == 1
        self.peers.send(
            self.host.node_id,
            Message(self.features_kind, round_no, b, tensors={"features": features.detach()}),
            wait=exact,
            reply="train.gradient" if exact else "",
        )

    def receive_gradient(
        self, round_no: int, b: int, features: torch.Tensor, what: str
    ) -> torch.Tensor | None:
        """The host's ∂L/∂(features) of batch b, None if it sent none."""
        grad = self.expect(self.host, "train.gradient", round_no, b, self.me)
        return grad.tensors.get("gradient")

    def complete_batch(self, round_no: int, b: int, features: torch.Tensor, what: str) -> None:
        self.apply_gradient(features, self.receive_gradient(round_no, b, features, what), b)

    def apply_gradient(self, features: torch.Tensor, grad: torch.Tensor | None, b: int) -> None:
        if grad is None or grad.shape != features.shape:
            raise TaskFailed(
                f"host '{self.host.node_id}' returned a gradient of shape "
                f"{None if grad is None else list(grad.shape)} for batch {b}, expected "
                f"{list(features.shape)}"
            )
        if not self.s.is_feature_trainable:
            return
        self.s.feature_optimizer.zero_grad(set_to_none=True)
        with self.watchdog.local(f"backward of batch {b}"):
            features.backward(grad.to(features.dtype))
        self.s.feature_optimizer.step()

    def test(self, round_no: int) -> dict[str, float]:
        s = self.s
        host = self.host
        with evaluating(s.feature_model):
            count = 0
            for b, item in self.test_batches():
                features = check_features(item, "iterate_test_feature")
                self.send_test_batch(host, b, features)
                count = b + 1
            self.send_end(host.node_id, "test.features", 0, count)
        return {}

    def agree_bundle(self, digest: str, error: str = "") -> dict[str, str]:
        """Send the host this bundle's digest (or why there is none); take every party's."""
        host = self.host
        blobs = {"error": error.encode()} if error else {"digest": digest.encode()}
        self.peers.send(host.node_id, Message(BUNDLE_DIGEST, 0, 0, blobs=blobs))
        if error:
            raise TaskFailed(error)
        msg = self.expect(host, BUNDLE_PARTIES, 0, 0, self.me)
        if "error" in msg.blobs:
            raise TaskFailed(msg.blobs["error"].decode(errors="replace"))
        parties = parse_parties(msg.blobs.get("parties", b""), f"host '{host.node_id}'")
        if parties.get(self.node_id) != digest:
            raise TaskFailed(
                f"host '{host.node_id}' recorded another digest for this party's bundle; the "
                "parties disagree on the model — train again"
            )
        return parties

    def send_test_batch(self, host: Participant, b: int, features: torch.Tensor) -> None:
        self.peers.send(
            host.node_id, Message("test.features", 0, b, tensors={"features": features})
        )
