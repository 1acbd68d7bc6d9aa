"""The collaborator (feature owner) scheduler: only a feature model; never sees labels."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

import torch
from torch import nn

from party_node.hetero_nn.base import HeteroNNScheduler


class HeteroNNCollaboratorScheduler(HeteroNNScheduler):
    """Seed-compatible collaborator (`alphafed.hetero_nn.HeteroNNCollaboratorScheduler`)."""

    _role = "collaborator"

    def __init__(
        self,
        feature_key: str,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        calculation_timeout: int = 300,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            calculation_timeout=calculation_timeout,
        )

    @abstractmethod
    def iterate_train_feature(
        self, feature_model: nn.Module, train_ids: list[str]
    ) -> Iterable[torch.Tensor]:
        """Yield one batch of features at a time, aligned with the host's batches."""

    @abstractmethod
    def iterate_test_feature(
        self, feature_model: nn.Module, test_ids: set[str]
    ) -> Iterable[torch.Tensor]:
        """Yield the test feature batches."""
