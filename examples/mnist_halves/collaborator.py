"""The collaborator of the MNIST-halves task (sees the right half; never the labels)."""

from __future__ import annotations

from torch import nn, optim

from examples.mnist_halves import data
from examples.mnist_halves.model import HalfConvNet
from examples.mnist_halves.seeding import pop_seed
from party_node.hetero_nn import HeteroNNCollaboratorScheduler, aligned_order


class DemoHeteroCollaborator(HeteroNNCollaboratorScheduler):
    def __init__(
        self,
        feature_key: str,
        batch_size: int,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        calculation_timeout: int = 300,
        data_root: str | None = None,
        dropout: bool = True,
        lr: float = 0.01,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            calculation_timeout=calculation_timeout,
        )
        self._set_options(batch_size, data_root, dropout, lr)

    def _set_options(
        self, batch_size: int, data_root: str | None, dropout: bool, lr: float
    ) -> None:
        """The example's own settings (shared with the secure variant)."""
        self.batch_size = batch_size
        self.data_root = data_root or data.data_root()
        self.dropout = dropout
        self.lr = lr

    def load_local_ids(self) -> list[str]:
        return data.local_ids(data.COLLABORATOR_IDS)

    def split_dataset(self, id_intersection: set[str]) -> tuple[set[str], set[str]]:
        return data.split(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return HalfConvNet(dropout=self.dropout)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.SGD(feature_model.parameters(), lr=self.lr, momentum=0.9)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: list[str]):
        order = aligned_order(train_ids, self.current_round)
        for images, _ in data.batches(self.data_root, order, False, self.batch_size, "right"):
            yield feature_model(images)  # labels are dropped: the collaborator has none

    def predict_feature(self, feature_model: nn.Module, ids: list[str]):
        """Serving: the right halves of the ids this party holds."""
        found = data.held(data.COLLABORATOR_IDS, ids)
        return found, feature_model(data.half_images(self.data_root, found, "right"))

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: list[str]):
        for images, _ in data.batches(self.data_root, test_ids, True, self.batch_size, "right"):
            yield feature_model(images)


def make_scheduler(**kwargs) -> DemoHeteroCollaborator:
    """Factory for `heteronn node --scheduler examples.mnist_halves.collaborator:make_scheduler`."""
    kwargs.setdefault("feature_key", "demo_collaborator")
    pop_seed(kwargs, "demo_collaborator")
    kwargs.setdefault("batch_size", 128)
    defence = kwargs.pop("label_defence", None)  # every party must pass the same
    scheduler = DemoHeteroCollaborator(**kwargs)
    scheduler.label_defence = defence
    return scheduler
