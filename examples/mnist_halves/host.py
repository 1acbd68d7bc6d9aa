"""The host of the MNIST-halves task (sees the left half of each image and the labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim

from examples.mnist_halves import data
from examples.mnist_halves.model import HalfConvNet, InferModule
from examples.mnist_halves.seeding import pop_seed
from party_node import logger
from party_node.hetero_nn import HeteroNNHostScheduler, aligned_order


class DemoHeteroHost(HeteroNNHostScheduler):
    def __init__(
        self,
        feature_key: str,
        batch_size: int,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        log_rounds: int = 0,
        schedule_timeout: int = 30,
        data_root: str | None = None,
        other_key: str = "demo_collaborator",
        dropout: bool = True,
        lr: float = 0.01,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            log_rounds=log_rounds,
            schedule_timeout=schedule_timeout,
        )
        self._set_options(batch_size, data_root, other_key, dropout, lr)

    def _set_options(
        self, batch_size: int, data_root: str | None, other_key: str, dropout: bool, lr: float
    ) -> None:
        """The example's own settings (shared with the secure variant)."""
        self.batch_size = batch_size
        self.data_root = data_root or data.data_root()
        self.other_key = other_key
        self.dropout = dropout
        self.lr = lr

    def load_local_ids(self) -> list[str]:
        return data.local_ids(data.HOST_IDS)

    def split_dataset(self, id_intersection: set[str]) -> tuple[set[str], set[str]]:
        train, test = data.split(id_intersection)
        logger.info(f"Got {len(train)} intersecting samples for training.")
        logger.info(f"Got {len(test)} intersecting samples for testing.")
        return train, test

    def build_feature_model(self) -> nn.Module:
        return HalfConvNet(dropout=self.dropout)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.SGD(feature_model.parameters(), lr=self.lr, momentum=0.9)

    def build_infer_model(self) -> nn.Module:
        return InferModule()

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return optim.SGD(infer_model.parameters(), lr=self.lr, momentum=0.9)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: list[str]):
        # The same per-round order at every party (the seed's md5 line does not run).
        order = aligned_order(train_ids, self.current_round)
        for images, labels in data.batches(self.data_root, order, False, self.batch_size, "left"):
            yield feature_model(images), labels

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: list[str]):
        for images, labels in data.batches(self.data_root, test_ids, True, self.batch_size, "left"):
            yield feature_model(images), labels

    def predict_feature(self, feature_model: nn.Module, ids: list[str]):
        """Serving: the left halves of the ids this party holds."""
        found = data.held(data.HOST_IDS, ids)
        return found, feature_model(data.half_images(self.data_root, found, "left"))

    def predict_a_batch(self, feature_projection: dict[str, torch.Tensor]) -> torch.Tensor:
        """Serving: train_a_batch's fusion and inference model, without the step."""
        return self.infer_model(self.fuse(feature_projection))

    def fuse(self, projection: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat((projection[self.feature_key], projection[self.other_key]), dim=1)

    def train_a_batch(self, feature_projection: dict[str, torch.Tensor], labels: torch.Tensor):
        self.optimizer.zero_grad()
        out = self.infer_model(self.fuse(feature_projection))
        loss = F.nll_loss(out, labels)
        loss.backward()
        self.optimizer.step()

    def run_test(self, batched_feature_projection, batched_labels):
        loss, correct, total = 0.0, 0, 0
        for projection, labels in zip(batched_feature_projection, batched_labels, strict=True):
            out = self.infer_model(self.fuse(projection))
            loss += F.nll_loss(out, labels, reduction="sum").item()
            correct += int((out.argmax(1) == labels).sum())
            total += len(labels)
        self.tb_writer.add_scalar("test_results/average_loss", loss / total, self.current_round)
        self.tb_writer.add_scalar("test_results/accuracy", correct / total, self.current_round)


def make_scheduler(**kwargs) -> DemoHeteroHost:
    """Factory for `heteronn node --scheduler examples.mnist_halves.host:make_scheduler`."""
    kwargs.setdefault("feature_key", "demo_host")
    pop_seed(kwargs, "demo_host")
    kwargs.setdefault("batch_size", 128)
    defence = kwargs.pop("label_defence", None)  # every party must pass the same
    scheduler = DemoHeteroHost(**kwargs)
    scheduler.label_defence = defence
    return scheduler
