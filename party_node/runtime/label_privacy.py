"""The host's label privacy during training: the agreed defence applied to labels and to each
gradient as it leaves for a collaborator, and the live leak metric of each round (TensorBoard,
report.json, Prometheus through the TaskObserver), scored on its own thread while training
goes on: the k-means of a round's sample cost 30-50 ms of the host's round, which centralized
training does not pay (docs/performance.md)."""

from __future__ import annotations

import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F

from party_node.errors import ConfigError
from party_node.privacy import LeakMeter, LeakScore, class_labels, parse_defence
from party_node.privacy.meter import RoundSample
from party_node.privacy.settings import MarvellDefence


class HostPrivacy:
    def __init__(self, setting: Any, leak_metric: bool = True) -> None:
        self.setting = parse_defence(setting)
        # Unpredictable to the collaborators: the noise must not be reproducible by them.
        # Two streams: labels are drawn on the training thread, gradient noise and the leak
        # sample on the sender thread (a Generator is not shared across threads).
        self.generator = torch.Generator().manual_seed(secrets.randbits(63))
        self.label_generator = torch.Generator().manual_seed(secrets.randbits(63))
        self.gradient_defence = self.setting.gradient_defence()
        self.label_defence = self.setting.label_defence()
        self.leak_metric = leak_metric
        if leak_metric:  # scipy's first import (~0.5 s) is not a round's scoring cost
            import scipy.optimize  # noqa: F401
        self.meters: dict[str, LeakMeter] = {}
        #: Rounds handed to the scoring thread and not yet collected by `scored`, in order.
        self._pending: list[tuple[int, Future[dict[str, LeakScore]]]] = []
        self._scorer: ThreadPoolExecutor | None = None

    def labels_for_training(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels train_a_batch sees (randomised under label DP), in the user's format."""
        y = self.classes_of(labels)  # every batch: a bad label fails here, named
        if self.label_defence is None or y is None:
            return labels
        answered = self.label_defence.relabel(y, self.label_generator)
        if labels.dim() == 2:  # one-hot rows stay one-hot
            return F.one_hot(answered, labels.shape[1]).to(labels.dtype)
        return answered.to(labels.dtype).reshape(labels.shape)

    def classes_of(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The labels as class indices for a defence that needs them (None for the others);
        a ConfigError naming the defence when they are not classes it can handle."""
        kind = self.setting.kind
        if kind in ("none", "noise"):
            return None
        y = class_labels(labels)
        classes = 2 if isinstance(self.setting, MarvellDefence) else self.setting.classes
        if y is None or int(y.max()) >= classes or y.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"label_defence {kind!r} needs class labels 0..{classes - 1} (one per row), but "
                f"the host's labels have shape {list(labels.shape)} and dtype {labels.dtype}"
                + ("" if y is None else f" with values up to {int(y.max())}")
                + (
                    "; marvell is for binary tasks, use gradient_rr or noise for more classes"
                    if classes == 2 and kind == "marvell"
                    else "; set classes to the number of labels, or choose another defence"
                )
            )
        return y

    def outgoing(self, peer: str, grad: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What leaves for `peer` instead of `grad` (labels: the batch's true labels, checked
        by labels_for_training); sampled for the leak metric."""
        grad = self.defend(grad, labels)
        self.sample(peer, grad, labels)
        return grad

    def defend(self, grad: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What leaves instead of `grad`; `sample` it once it has left (a sender in a hurry)."""
        if self.gradient_defence is not None:
            y = self.classes_of(labels)
            defended = self.gradient_defence(grad, labels if y is None else y, self.generator)
            grad = defended.to(grad.dtype)
        return grad

    def sample(self, peer: str, sent: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep (a sample of) what left for `peer` for the round's leak metric."""
        if self.leak_metric:
            meter = self.meters.setdefault(peer, LeakMeter(self.generator))
            meter.add(sent, labels)

    def end_round(self, round_no: int) -> None:
        """Hand the round just finished to the scoring thread (after the previous round's
        scoring, if that is still running: one round at a time) and return; `scored` gives
        the scores. The scoring draws from its own generator, seeded here: the defences'
        stream advances by the same draw whenever the scoring runs."""
        taken = {peer: meter.take() for peer, meter in self.meters.items()}
        samples = {peer: sample for peer, sample in taken.items() if sample is not None}
        if not samples:
            return
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        if self._pending:  # one round at a time; its scores (or error) stay for `scored`
            self._pending[-1][1].exception()
        if self._scorer is None:
            self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leak-metric")
        pending = self._scorer.submit(_score, samples, torch.Generator().manual_seed(seed))
        self._pending.append((round_no, pending))

    def scored(self, wait: bool = False) -> list[tuple[int, dict[str, LeakScore]]]:
        """The rounds whose scores are ready, oldest first (`wait`: all handed over so far),
        each with every collaborator's score; raises the scoring's error, if any."""
        ready = []
        while self._pending and (wait or self._pending[0][1].done()):
            round_no, pending = self._pending.pop(0)
            ready.append((round_no, pending.result()))
        return ready

    # ---- checkpoints (party_node.runtime.roles.base: the state contract) -------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The defences' random streams, so a resumed task draws what the interrupted one
        would have (host-local: the checkpoint never leaves the host)."""
        return {
            "generator": self.generator.get_state(),
            "label_generator": self.label_generator.get_state(),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.label_generator.set_state(state["label_generator"])


def _score(samples: dict[str, RoundSample], generator: torch.Generator) -> dict[str, LeakScore]:
    return {peer: sample.score(generator) for peer, sample in samples.items()}
