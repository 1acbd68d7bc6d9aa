"""The host (label owner) scheduler: feature model, inference model, labels, loss."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

import torch
from torch import nn, optim

from party_node.errors import ConfigError
from party_node.hetero_nn.base import HeteroNNScheduler

#: Default of `checkpoint_every_seconds` (docs/operations.md has the measured cost).
CHECKPOINT_EVERY_SECONDS = 60.0


class HeteroNNHostScheduler(HeteroNNScheduler):
    """Seed-compatible host scheduler (`alphafed.hetero_nn.HeteroNNHostScheduler`).

    Beyond the seed: every party checkpoints after the batch the host picks, once
    `checkpoint_every_batches` batches (0: off) or `checkpoint_every_seconds` seconds (0: off)
    have passed since the last checkpoint, so a crash costs at most that much training; every
    round also ends with one. The time trigger waits longer when the host's writes are slow,
    so that writing never takes more than 5% of the training time.
    """

    _role = "host"

    def __init__(
        self,
        feature_key: str,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        log_rounds: int = 0,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        checkpoint_every_batches: int = 0,
        checkpoint_every_seconds: float = CHECKPOINT_EVERY_SECONDS,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            log_rounds=log_rounds,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
        )
        self.infer_model: nn.Module | None = None
        self.optimizer: optim.Optimizer | None = None
        self.checkpoint_every_batches = checkpoint_every_batches
        self.checkpoint_every_seconds = checkpoint_every_seconds

    @abstractmethod
    def build_infer_model(self) -> nn.Module:
        """The inference model on the fused features."""

    @abstractmethod
    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        """Its optimizer; available to `train_a_batch` as `self.optimizer`."""

    @abstractmethod
    def iterate_train_feature(
        self, feature_model: nn.Module, train_ids: list[str]
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (features, labels) per training batch, in the order every party uses."""

    @abstractmethod
    def iterate_test_feature(
        self, feature_model: nn.Module, test_ids: set[str]
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (features, labels) per test batch."""

    @abstractmethod
    def train_a_batch(self, feature_projection: dict[str, torch.Tensor], labels: torch.Tensor):
        """Fuse the parties' features (keyed by feature_key), compute the loss, step."""

    @abstractmethod
    def run_test(
        self,
        batched_feature_projection: list[dict[str, torch.Tensor]],
        batched_labels: list[torch.Tensor],
    ):
        """Evaluate on all test batches at once; log with `self.tb_writer`."""

    def predict_a_batch(self, feature_projection: dict[str, torch.Tensor]) -> torch.Tensor:
        """Optional, for serving: the model's output for one batch, from the same
        `feature_projection` dict train_a_batch gets (e.g. ``return self.infer_model(
        torch.cat(...))``). Traced into the bundle when the task finishes; see
        docs/inference.md."""
        raise NotImplementedError("predict_a_batch")

    def is_task_finished(self) -> bool:
        """Stop after `max_rounds`; override for early stopping."""
        return self.current_round >= self.max_rounds

    def validate_context(self) -> None:
        super().validate_context()
        n, t = self.checkpoint_every_batches, self.checkpoint_every_seconds
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"checkpoint_every_batches must be an integer >= 0, got {n!r}")
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < float("inf"):
            raise ConfigError(f"checkpoint_every_seconds must be a number >= 0, got {t!r}")
        if self.infer_model is None:
            raise ConfigError("build_infer_model() returned None; return an nn.Module")
        if self.optimizer is None:
            raise ConfigError("build_infer_optimizer() returned None; return an optimizer")
        if (
            self.max_rounds < 1
            and type(self).is_task_finished is HeteroNNHostScheduler.is_task_finished
        ):
            raise ConfigError(
                "max_rounds is 0: the task would never train. Pass max_rounds >= 1 to the host "
                "scheduler (or override is_task_finished())"
            )
