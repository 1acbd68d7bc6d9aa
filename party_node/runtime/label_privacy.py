"""The host's label privacy during training: the agreed defence applied to labels and to each
gradient as it leaves for a collaborator, and the live leak metric scored at the end of each
round (TensorBoard, report.json, Prometheus through the TaskObserver)."""

from __future__ import annotations

import secrets
from typing import Any

import torch
import torch.nn.functional as F

from party_node.errors import ConfigError
from party_node.privacy import LeakMeter, LeakScore, class_labels, parse_defence
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
        if self.gradient_defence is not None:
            y = self.classes_of(labels)
            defended = self.gradient_defence(grad, labels if y is None else y, self.generator)
            grad = defended.to(grad.dtype)
        if self.leak_metric:
            meter = self.meters.setdefault(peer, LeakMeter(self.generator))
            meter.add(grad, labels)
        return grad

    def end_round(self) -> dict[str, LeakScore]:
        """Each collaborator's leak score for the round just finished."""
        scores = {peer: meter.score() for peer, meter in self.meters.items()}
        return {peer: score for peer, score in scores.items() if score is not None}

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
