"""The host's phases: PSI with every collaborator, fuse features, backpropagate, send each
collaborator the gradient of the loss w.r.t. its features, evaluate."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from party_node.errors import ConfigError, NamedKeyError, TaskFailed
from party_node.runtime.batch_checkpoints import CheckpointPolicy, MarkedPeers
from party_node.runtime.label_privacy import HostPrivacy
from party_node.runtime.links import Message, Participant
from party_node.runtime.outputs import atomic_torch_save, test_metrics
from party_node.runtime.roles.base import (
    BUNDLE_DIGEST,
    BUNDLE_PARTIES,
    Role,
    check_features,
    evaluating,
    parse_parties,
)
from party_node.serving.bundle import canonical
from party_node.serving.export import EXAMPLE_ROWS, Predictor, export_model


class FeatureProjection(dict):
    """The dict handed to train_a_batch/run_test; a wrong key says which keys exist."""

    def __missing__(self, key: object) -> torch.Tensor:
        known = ", ".join(repr(k) for k in sorted(self))
        raise NamedKeyError(
            f"no party has feature_key {key!r}; this task's feature keys are {known} — use the "
            "feature_key each party passes to its scheduler"
        )


class EarlyGradients:
    """Sends each collaborator its gradient the moment autograd computes it (a hook on its
    feature leaf, run on the thread doing the backward), while the host's backward continues
    through its own feature model: the collaborator's backward overlaps the host's instead of
    following it. In exact mode the collaborator's call for this batch is waiting here, so
    the send only hands the serialized gradient to that call (transport.replies); pipelined
    mode posts it. A thread of its own cost more in hand-offs and GIL waits than the send
    does (docs/performance.md)."""

    def __init__(self, role: HostRole, round_no: int, batch: int, leaves: dict[str, torch.Tensor]):
        self.role, self.round_no, self.batch = role, round_no, batch
        #: What left for each collaborator (after the label defence).
        self.sent: dict[str, torch.Tensor] = {}
        self.leaves = leaves
        for peer, leaf in leaves.items():
            leaf.register_hook(lambda grad, peer=peer: self._send(peer, grad))

    def _send(self, peer: str, grad: torch.Tensor) -> None:
        if peer in self.sent:
            raise ConfigError(
                f"train_a_batch backpropagated twice through the features of '{peer}' in one "
                "batch; call loss.backward() once per batch"
            )
        grad = self.role.privacy.defend(grad.detach().clone(), self.role.batch_labels)
        message = Message("train.gradient", self.round_no, self.batch, tensors={"gradient": grad})
        # Pipelined mode posts it (the training thread must not wait out a round trip).
        self.role.peers.send(peer, message, wait=self.role.mode.depth == 1)
        self.sent[peer] = grad

    def finish(self) -> None:
        """Zeros for a collaborator whose features the loss did not use; then sample what
        left for the leak metric (not on any collaborator's path)."""
        for peer, leaf in self.leaves.items():
            if peer not in self.sent:
                self._send(peer, torch.zeros_like(leaf))
        for peer, grad in self.sent.items():
            self.role.privacy.sample(peer, grad, self.role.batch_labels)


class HostRole(Role):
    #: Who waits on the collaborators, in error messages.
    me = "the host"
    #: The kind collaborators send each training batch under (and end the round with).
    features_kind = "train.features"

    def build_extra(self) -> None:
        s = self.s
        s.infer_model = s.build_infer_model()
        if not isinstance(s.infer_model, torch.nn.Module):
            raise ConfigError("build_infer_model() must return a torch.nn.Module")
        s.optimizer = s.build_infer_optimizer(s.infer_model)
        # The host decides when every party checkpoints inside a round (batch_checkpoints).
        self.policy = CheckpointPolicy(s.checkpoint_every_batches, s.checkpoint_every_seconds)
        self.peers = MarkedPeers(self.peers, lambda: self.checkpoint_due)
        self.privacy = HostPrivacy(getattr(s, "label_defence", None))
        self.batch_labels = torch.empty(0)

    @property
    def collaborators(self) -> list[Participant]:
        return [p for p in self.participants if p.role == "collaborator"]

    def psi(self, ids: list[str]) -> set[str]:
        return self.peers.psi_as_host(ids, self.timeout)

    # ---- training ------------------------------------------------------------------------------
    def unpack(self, item: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ConfigError(f"the host's {what} must yield (features, labels) pairs")
        features = check_features(item[0], what)
        labels = item[1]
        if not isinstance(labels, torch.Tensor) or labels.shape[0] != features.shape[0]:
            raise ConfigError(
                f"the host's {what} yielded {features.shape[0]} feature rows but labels of "
                f"shape {list(getattr(labels, 'shape', []))}; yield one label per row"
            )
        return features, labels

    def check_rows(self, peer: Participant, tensor: torch.Tensor, rows: int, where: str) -> None:
        if tensor.dim() < 1 or tensor.shape[0] != rows:
            got = tensor.shape[0] if tensor.dim() else 0
            raise TaskFailed(
                f"collaborator '{peer.node_id}' sent {got} rows for {where}; host batch has "
                f"{rows} rows — both parties must use the same batch_size and ordering"
            )

    def receive_features(self, round_no: int, b: int, rows: int) -> dict[str, torch.Tensor]:
        """The collaborators' plaintext features of batch b, as leaves that collect gradients."""
        leaves = {}
        for peer in self.collaborators:
            msg = self.expect(peer, self.features_kind, round_no, b, self.me)
            tensor = msg.tensors.get("features")
            if tensor is None:
                raise TaskFailed(f"collaborator '{peer.node_id}' sent no features for batch {b}")
            self.check_rows(peer, tensor, rows, f"batch {b} of round {round_no}")
            leaves[peer.node_id] = tensor.requires_grad_(True)
        return leaves

    def train_round(self, round_no: int) -> dict[str, Any]:
        s = self.s
        if self.streams_training:
            for peer in self.collaborators:
                self.peers.subscribe(peer.node_id, round_no)
        self.publish_leak()
        s.feature_model.train()
        s.infer_model.train()
        batches = self.train_batches(
            round_no,
            s.iterate_train_feature(s.feature_model, self.train_ids),
            f"iterate_train_feature in round {round_no}",
        )
        count = self.batches_done
        for b, item in batches:
            if self.policy is not None and self.policy.due(b):
                self.checkpoint_due = (round_no, b)
            features, labels = self.unpack(item, "iterate_train_feature")
            self.batch_labels = labels
            own = self.own_projection(features)
            leaves = self.receive_features(round_no, b, features.shape[0])
            projection = FeatureProjection({s.feature_key: own})
            projection.update({p.feature_key: leaves[p.node_id] for p in self.collaborators})
            self.zero_grad()
            with (
                self.deliver_gradients(round_no, b, leaves),
                self.watchdog.local(f"train_a_batch (round {round_no} batch {b})"),
            ):
                s.train_a_batch(projection, self.privacy.labels_for_training(labels))
            self.step_optimizers()
            self.observer.batch(features.shape[0], "train")
            self.after_batch(round_no, b)
            count = b + 1
        if count == 0:
            raise ConfigError(
                "iterate_train_feature yielded no batches; check train_ids/batch_size"
            )
        for peer in self.collaborators:
            self.expect_end(peer, self.features_kind, round_no, count, self.me)
        self.privacy.end_round(round_no)  # scored beside the next phases (publish_leak)
        finished = bool(s.is_task_finished())
        test_now = round_no == 1 or finished or (s.log_rounds > 0 and round_no % s.log_rounds == 0)
        return {"finished": finished, "test_requested": test_now}

    def publish_leak(self, wait: bool = False) -> None:
        """The live leak metric of the rounds scored so far (`wait`: of every round handed
        over): TensorBoard, report.json (via the runtime), Prometheus. Called on this thread
        at the start of each phase and at the end of the task, not by the scoring thread:
        run_test reads the writer's scalars."""
        for round_no, scores in self.privacy.scored(wait):
            for peer, score in scores.items():
                entry = {"round": round_no, "peer": peer, **score.scores()}
                entry["seconds"] = round(score.seconds, 4)
                self.label_leak.append(entry)
                for name, value in score.scores().items():
                    self.s.tb_writer.add_scalar(f"label_leak/{peer}/{name}", value, round_no)
                self.observer.label_leak(peer, score.scores(), score.seconds)

    # ---- per-batch steps the secure host replaces ---------------------------------------------
    def own_projection(self, features: torch.Tensor) -> torch.Tensor:
        """What train_a_batch sees of the host's own features (plain mode: them)."""
        return features

    def zero_grad(self) -> None:
        self.s.feature_optimizer.zero_grad(set_to_none=True)

    @contextmanager
    def deliver_gradients(
        self, round_no: int, b: int, leaves: dict[str, torch.Tensor]
    ) -> Iterator[None]:
        """Around train_a_batch: each collaborator gets its gradient as autograd computes it."""
        early = EarlyGradients(self, round_no, b, leaves)
        yield
        early.finish()

    def step_optimizers(self) -> None:
        if self.s.is_feature_trainable:
            self.s.feature_optimizer.step()

    # ---- evaluation ----------------------------------------------------------------------------
    def test(self, round_no: int) -> dict[str, float]:
        s = self.s
        self.publish_leak()
        with evaluating(s.feature_model, s.infer_model):
            own = [self.unpack(item, "iterate_test_feature") for _, item in self.test_batches()]
            projections = [FeatureProjection({s.feature_key: f}) for f, _ in own]
            self.collect_test_features(projections, [f.shape[0] for f, _ in own])
            labels = [lbl for _, lbl in own]
            if projections:  # the predictor in the bundle is traced with these
                self.example_projection = {k: v[:EXAMPLE_ROWS] for k, v in projections[0].items()}
            writer = s.tb_writer
            writer.last_scalars.clear()
            with self.watchdog.local(f"run_test (round {round_no})"):
                s.run_test(projections, labels)
            writer.flush()
            return test_metrics(writer.last_scalars)

    def collect_test_features(self, projections: list[dict], rows: list[int]) -> None:
        for peer in self.collaborators:
            for b, n in enumerate(rows):
                msg = self.expect(peer, "test.features", 0, b, self.me)
                tensor = msg.tensors["features"]
                self.check_rows(peer, tensor, n, f"test batch {b}")
                projections[b][peer.feature_key] = tensor
            self.expect_end(peer, "test.features", 0, len(rows), self.me)

    # ---- the model bundle ----------------------------------------------------------------------
    def bundle_fields(self, writer: Any) -> dict[str, Any]:
        fields = super().bundle_fields(writer)
        fields["infer_model"] = {
            "state": writer.save_state("infer_model.pt", self.s.infer_model.state_dict())
        }
        fields["predictor"] = self.export_predictor(writer)
        return fields

    def export_predictor(self, writer: Any) -> dict[str, Any]:
        """predict_a_batch with the inference model, traced on the final test's first batch,
        taking the parties' projections in the order of their feature keys."""
        from party_node.hetero_nn.host import HeteroNNHostScheduler

        s = self.s
        keys = sorted(p.feature_key for p in self.participants)
        example = getattr(self, "example_projection", None)
        if type(s).predict_a_batch is HeteroNNHostScheduler.predict_a_batch:
            return {
                "script": None,
                "state": None,
                "error": "the host scheduler defines no predict_a_batch(feature_projection); add "
                "it (the fusion of train_a_batch, returning self.infer_model's output) and train "
                "again to serve this model",
            }
        predictor = Predictor(s.infer_model, s.predict_a_batch, keys, FeatureProjection)
        ordered = tuple(example[k] for k in keys) if example else None
        with self.watchdog.local("tracing predict_a_batch for the bundle"):
            entry = export_model(
                writer, "predictor", predictor, ordered, "no test ran", "predictor", False
            )
        entry["keys"] = keys  # the order of its inputs
        return entry

    def agree_bundle(self, digest: str, error: str = "") -> dict[str, str]:
        """Collect every collaborator's bundle digest, then send each of them the full map."""
        parties = {self.node_id: digest}
        failure = error
        for peer in self.collaborators:
            msg = self.expect(peer, BUNDLE_DIGEST, 0, 0, self.me)
            if "error" in msg.blobs and not failure:
                failure = (
                    f"collaborator '{peer.node_id}' could not write its model bundle: "
                    + msg.blobs["error"].decode(errors="replace")
                )
            parties[peer.node_id] = msg.blobs.get("digest", b"").decode(errors="replace")
        blobs = {"error": failure.encode()} if failure else {"parties": canonical(parties)}
        for peer in self.collaborators:
            self.peers.send(peer.node_id, Message(BUNDLE_PARTIES, 0, 0, blobs=blobs))
        if failure:
            raise TaskFailed(failure)
        return parse_parties(canonical(parties), "this host")

    # ---- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "infer_model": self.s.infer_model.state_dict(),
            "infer_optimizer": self.s.optimizer.state_dict(),
            "label_privacy": self.privacy.state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.s.infer_model.load_state_dict(state["infer_model"])
        self.s.optimizer.load_state_dict(state["infer_optimizer"])
        if "label_privacy" in state:
            self.privacy.load_state(state["label_privacy"])

    def save_final(self, out_dir: Path) -> None:
        self.publish_leak(wait=True)
        super().save_final(out_dir)
        atomic_torch_save(self.s.infer_model.state_dict(), out_dir / "infer_model.pt")
