"""Behaviour shared by host and collaborator roles: building models, checked message
receipt, checkpoints of the feature model, and the hooks for checkpoints inside a round.

State contract (what a checkpoint holds, and what secure layers must expose): `state()` returns
everything that outlives a batch — models, optimizers, random states, the secure layer's shares
and mask state — as tensors and plain data; `load_state()` takes it back. Checkpoints are taken
only between batches (`after_batch`, once a batch's last step is done), so nothing batch-local
(ciphertexts, pending masks) is ever part of one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from party_node.errors import ConfigError, TaskFailed
from party_node.privacy import AGREEMENT_KEY as PRIVACY_KEY
from party_node.privacy import parse_defence
from party_node.runtime import rng
from party_node.runtime.batch_checkpoints import CheckpointPolicy, Resume, skip_batches
from party_node.runtime.links import AbortSignal, Message, Participant, PeerLink, TaskObserver
from party_node.runtime.outputs import atomic_torch_save
from party_node.runtime.training_mode import AGREEMENT_KEY as MODE_KEY
from party_node.runtime.training_mode import TrainingMode, parse_training_mode
from party_node.runtime.watchdog import Watchdog
from party_node.serving.export import ExampleRecorder, export_model

_END = object()
#: Message kinds of the bundle agreement when a task finishes (collaborator -> host -> all).
BUNDLE_DIGEST = "bundle.digest"
BUNDLE_PARTIES = "bundle.parties"


class Role:
    def __init__(
        self, scheduler: Any, peers: PeerLink, abort: AbortSignal, watchdog: Watchdog, node_id: str
    ):
        self.s = scheduler
        self.peers = peers
        self.abort = abort
        self.watchdog = watchdog
        self.node_id = node_id
        self.observer = TaskObserver()
        self.participants: tuple[Participant, ...] = ()
        self.train_ids: list = []
        self.test_ids: list = []
        #: (round, batch) after which this party checkpoints (the host decides; see
        #: batch_checkpoints), and the runtime's callback that writes it.
        self.checkpoint_due: tuple[int, int] | None = None
        self.save_checkpoint: Callable[[int, int], None] | None = None
        #: The host's rule for checkpoint_due (None at collaborators: they follow the host).
        self.policy: CheckpointPolicy | None = None
        #: Set by the runtime when the task resumes inside a round.
        self.resume: Resume | None = None
        self.round_start_rng: dict[str, Any] = {}
        self.batches_done = 0
        self.mode = TrainingMode()
        #: The host's live leak metric, one entry per round and collaborator (report.json).
        self.label_leak: list[dict[str, Any]] = []

    # ---- setup ----------------------------------------------------------------------------------
    def build(self) -> None:
        s = self.s
        s.feature_model = s.build_feature_model()
        if not isinstance(s.feature_model, torch.nn.Module):
            raise ConfigError("build_feature_model() must return a torch.nn.Module")
        s.feature_optimizer = s.build_feature_optimizer(s.feature_model)
        self.mode = parse_training_mode(getattr(s, "training_mode", None))
        self.peers.set_window(self.mode.send_window)
        self.build_extra()
        s.validate_context()
        # The bundle's TorchScript is traced with the feature model's last input.
        self.recorder = ExampleRecorder(s.feature_model)

    def build_extra(self) -> None:
        """Role-specific models (the host's inference model)."""

    def agreement(self) -> dict[str, str]:
        """Settings every party must share; the coordinator compares them at join."""
        return {
            "mode": "secure" if getattr(self.s, "_secure", False) else "plain",
            MODE_KEY: self.mode.agreement(),
            PRIVACY_KEY: parse_defence(getattr(self.s, "label_defence", None)).agreement(),
        }

    def set_participants(self, participants: Sequence[Participant]) -> None:
        self.participants = tuple(participants)

    def set_split(self, train: set, test: set) -> None:
        # Sorted lists, so every party iterates the same order even for str ids, whose set
        # order differs between processes.
        self.train_ids = _sorted(train)
        self.test_ids = _sorted(test)

    #: Plain roles' training messages may come by stream (secure roles' exceed one chunk).
    plain_messages = True

    @property
    def streams_training(self) -> bool:
        """Whether this round's training messages come by stream (exact-mode plain training:
        transport.feeds; pipelined mode keeps several calls in flight instead)."""
        return self.plain_messages and self.mode.depth == 1

    @property
    def timeout(self) -> float:
        return float(self.s.calculation_timeout)

    # ---- checked steps ------------------------------------------------------------------------
    def batches(
        self, iterable: Any, what: str, around: Callable[[], AbstractContextManager] = nullcontext
    ) -> Iterator[tuple[int, Any]]:
        """Pull user batches one at a time under the watchdog (and `around()`: the user's
        iterator runs the feature model's forward in it)."""
        it = iter(iterable)
        b = 0
        while True:
            with self.watchdog.local(f"{what} (batch {b})"), around():
                item = next(it, _END)
            if item is _END:
                return
            yield b, item
            b += 1

    def train_batches(
        self,
        round_no: int,
        iterable: Any,
        what: str,
        around: Callable[[], AbstractContextManager] = nullcontext,
    ) -> Iterator[tuple[int, Any]]:
        """The round's batches from the user's iterator, numbered from 0. When resuming inside
        this round, those the checkpoint holds are pulled and dropped here (with the random
        states put where the uninterrupted run had them), and `batches_done` counts them: the
        round has at least that many batches even if none is left."""
        resume = self.resume if self.resume and self.resume.round == round_no else None
        self.resume, self.checkpoint_due = None, None
        if resume is not None:
            rng.restore(resume.round_start_rng)
        self.round_start_rng = rng.capture()
        self.batches_done = resume.batches if resume else 0
        if self.policy is not None:
            self.policy.reset(self.batches_done)
        batches = self.batches(iterable, what, around)
        if resume is not None:
            skip_batches(batches, resume.batches, self.s.feature_model, what)
            rng.restore(resume.rng)
        return batches

    def after_batch(self, round_no: int, b: int) -> None:
        """Batch b is done here: checkpoint if it is the batch every party checkpoints after."""
        if self.checkpoint_due != (round_no, b):
            return
        self.checkpoint_due = None
        start = time.monotonic()
        if self.save_checkpoint is not None:
            self.save_checkpoint(round_no, b + 1)
        if self.policy is not None:
            self.policy.reset(b + 1, time.monotonic() - start)

    def test_batches(self) -> Iterator[tuple[int, Any]]:
        """The user's test batches (call inside `evaluating`)."""
        s = self.s
        return self.batches(
            s.iterate_test_feature(s.feature_model, self.test_ids), "iterate_test_feature"
        )

    def expect(
        self, peer: Participant, kind: str, round_no: int, batch: int, host_batches: str
    ) -> Message:
        """Receive `peer`'s next message and check it is `kind` for (round, batch)."""
        msg = self.peers.receive(peer.node_id, self.timeout)
        if msg.end_of_stream:
            raise TaskFailed(
                f"{peer.role} '{peer.node_id}' has only {msg.batch} batches in "
                f"{_phase(kind, round_no)} "
                f"but {host_batches} has more; every party must use the same batch_size and the "
                "same ids from split_dataset"
            )
        if (msg.kind, msg.round, msg.batch) != (kind, round_no, batch):
            raise TaskFailed(
                f"{peer.role} '{peer.node_id}' sent {msg.kind} for round {msg.round} batch "
                f"{msg.batch}, expected {kind} for round {round_no} batch {batch}; the parties are "
                "out of step — check that every party runs the same task version"
            )
        return msg

    def expect_end(self, peer: Participant, kind: str, round_no: int, count: int, me: str) -> None:
        msg = self.peers.receive(peer.node_id, self.timeout)
        if not msg.end_of_stream:
            raise TaskFailed(
                f"{peer.role} '{peer.node_id}' has more batches than {me} ({count}) in "
                f"{_phase(kind, round_no)}; every party must use the same batch_size and the same "
                "ids from split_dataset"
            )

    def send_end(self, peer: str, kind: str, round_no: int, count: int) -> None:
        self.peers.send(peer, Message(kind=kind, round=round_no, batch=count, end_of_stream=True))

    # ---- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "feature_model": self.s.feature_model.state_dict(),
            "feature_optimizer": self.s.feature_optimizer.state_dict(),
            "rng": rng.capture(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.s.feature_model.load_state_dict(state["feature_model"])
        self.s.feature_optimizer.load_state_dict(state["feature_optimizer"])
        rng.restore(state["rng"])

    def save_final(self, out_dir: Path) -> None:
        atomic_torch_save(self.s.feature_model.state_dict(), out_dir / "feature_model.pt")

    # ---- the model bundle (party_node.serving) ------------------------------------------------
    def bundle_fields(self, writer: Any) -> dict[str, Any]:
        """Save this party's models into `writer`; their manifest entries."""
        s = self.s
        with self.watchdog.local("tracing the feature model for the bundle"):
            entry = export_model(
                writer,
                "feature_model",
                s.feature_model,
                self.recorder.example(),
                self.recorder.problem,
                "feature model",
            )
        return {"feature_model": entry}

    def agree_bundle(self, digest: str, error: str = "") -> dict[str, str]:
        """Exchange bundle digests with the other parties; every party's, by node id."""
        raise NotImplementedError

    # ---- phases (per role) ----------------------------------------------------------------------
    def psi(self, ids: list[str]) -> set[str]:
        raise NotImplementedError

    def train_round(self, round_no: int) -> dict[str, Any]:
        raise NotImplementedError

    def test(self, round_no: int) -> dict[str, float]:
        raise NotImplementedError


@contextmanager
def evaluating(*models: torch.nn.Module) -> Iterator[None]:
    """Models in eval mode without autograd inside; back in train mode however it ends."""
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for model in models:
            model.train()


def check_features(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{what} must yield torch.Tensor features, got {type(value).__name__}")
    if value.dim() < 1 or value.shape[0] == 0:
        raise ConfigError(f"{what} yielded features of shape {list(value.shape)}; need (rows, ...)")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ConfigError(f"{what} yielded NaN or infinite features; check the input data/model")
    return value


def _phase(kind: str, round_no: int) -> str:
    return "the test set" if kind.startswith("test") else f"round {round_no}"


def _sorted(ids: set) -> list:
    try:
        return sorted(ids)
    except TypeError:
        return sorted(ids, key=str)


def parse_parties(data: bytes, sender: str) -> dict[str, str]:
    """The {node id: bundle digest} map a peer sent in the bundle agreement."""
    try:
        parties = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        parties = None
    if not isinstance(parties, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parties.items()
    ):
        raise TaskFailed(f"{sender} sent a malformed bundle agreement")
    return parties
