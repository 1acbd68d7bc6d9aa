"""The host (label owner) scheduler: feature model, inference model, labels, loss."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

import torch
from torch import nn, optim

from party_node.errors import ConfigError
from party_node.hetero_nn.base import HeteroNNScheduler


class HeteroNNHostScheduler(HeteroNNScheduler):
    """Seed-compatible host scheduler (`alphafed.hetero_nn.HeteroNNHostScheduler`)."""

    _role = "host"

    def __init__(
        self,
        feature_key: str,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        log_rounds: int = 0,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
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
