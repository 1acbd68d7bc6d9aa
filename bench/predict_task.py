"""The task `bench/predict_bench.py` serves: a tabular vertical model like a bank and a shop
scoring customers (the usual vertical-FL case), over 100,000 ids that both parties hold.

Host: 16 columns and the labels; collaborator: 24 columns. Each feature model is an MLP to
16 columns; the inference model an MLP over the 32 fused columns to 2 classes. Columns are
derived from the id, so every process builds the same data without files."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim

from party_node.hetero_nn import (
    HeteroNNCollaboratorScheduler,
    HeteroNNHostScheduler,
    SecureHeteroNNCollaboratorScheduler,
    SecureHeteroNNHostScheduler,
    aligned_order,
)

N_IDS = 100_000
TRAIN_IDS = 4_096
WIDTH = {"bank": 24, "shop": 16}
EMBED = 16
PROJ = 8
BATCH = 256


def columns(key: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(map(ord, key)))
    return torch.randn(N_IDS, WIDTH[key], generator=g)


def labels() -> torch.Tensor:
    x = torch.cat([columns("shop")[:, :4], columns("bank")[:, :4]], dim=1)
    return (x.sum(1) > 0).long()


def feature_model(key: str) -> nn.Module:
    torch.manual_seed(len(key))
    return nn.Sequential(nn.Linear(WIDTH[key], 32), nn.ReLU(), nn.Linear(32, EMBED))


class Party:
    key: str

    def _data(self) -> None:
        self.x = columns(self.key)

    def load_local_ids(self) -> list[str]:
        return [str(i) for i in range(N_IDS)]

    def split_dataset(self, id_intersection):
        ids = sorted(id_intersection, key=int)[:TRAIN_IDS]
        return set(ids[: TRAIN_IDS * 3 // 4]), set(ids[TRAIN_IDS * 3 // 4 :])

    def build_feature_model(self) -> nn.Module:
        return feature_model(self.key)

    def build_feature_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def rows(self, ids) -> torch.Tensor:
        return self.x[torch.tensor([int(i) for i in ids])]

    def predict_feature(self, feature_model, ids):
        found = [i for i in ids if i.isdigit() and int(i) < N_IDS]
        return found, feature_model(self.rows(found))


class BenchHost(Party, HeteroNNHostScheduler):
    key = "shop"

    def __init__(self, max_rounds: int = 2, **kwargs) -> None:
        super().__init__(feature_key=self.key, max_rounds=max_rounds, log_rounds=1, **kwargs)
        self._data()
        self.y = labels()

    def build_infer_model(self) -> nn.Module:
        torch.manual_seed(3)
        width = getattr(self, "fused_width", 2 * EMBED)
        return nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 2))

    def build_infer_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def iterate_train_feature(self, feature_model, train_ids):
        order = aligned_order(train_ids, self.current_round)
        for s in range(0, len(order), BATCH):
            part = order[s : s + BATCH]
            yield feature_model(self.rows(part)), self.y[[int(i) for i in part]]

    def iterate_test_feature(self, feature_model, test_ids):
        for s in range(0, len(test_ids), BATCH):
            part = test_ids[s : s + BATCH]
            yield feature_model(self.rows(part)), self.y[[int(i) for i in part]]

    def fuse(self, projection):
        return torch.cat((projection["shop"], projection["bank"]), dim=1)

    def train_a_batch(self, feature_projection, labels):
        self.optimizer.zero_grad()
        F.cross_entropy(self.infer_model(self.fuse(feature_projection)), labels).backward()
        self.optimizer.step()

    def run_test(self, batched_feature_projection, batched_labels):
        right = total = 0
        for projection, y in zip(batched_feature_projection, batched_labels, strict=True):
            right += int((self.infer_model(self.fuse(projection)).argmax(1) == y).sum())
            total += len(y)
        self.tb_writer.add_scalar("test/accuracy", right / total, self.current_round)

    def predict_a_batch(self, feature_projection):
        return F.log_softmax(self.infer_model(self.fuse(feature_projection)), dim=-1)


class BenchCollaborator(Party, HeteroNNCollaboratorScheduler):
    key = "bank"

    def __init__(self, **kwargs) -> None:
        super().__init__(feature_key=self.key, **kwargs)
        self._data()

    def iterate_train_feature(self, feature_model, train_ids):
        order = aligned_order(train_ids, self.current_round)
        for s in range(0, len(order), BATCH):
            yield feature_model(self.rows(order[s : s + BATCH]))

    def iterate_test_feature(self, feature_model, test_ids):
        for s in range(0, len(test_ids), BATCH):
            yield feature_model(self.rows(test_ids[s : s + BATCH]))


class SecureBenchHost(BenchHost, SecureHeteroNNHostScheduler):
    fused_width = 2 * PROJ

    def __init__(self, max_rounds: int = 2, **kwargs) -> None:
        SecureHeteroNNHostScheduler.__init__(
            self, feature_key=self.key, max_rounds=max_rounds, log_rounds=1,
            project_layer_config=[("shop", EMBED, PROJ), ("bank", EMBED, PROJ)],
            project_layer_lr=0.05, **kwargs,
        )
        self._data()
        self.y = labels()


class SecureBenchCollaborator(BenchCollaborator, SecureHeteroNNCollaboratorScheduler):
    def __init__(self, **kwargs) -> None:
        SecureHeteroNNCollaboratorScheduler.__init__(
            self, feature_key=self.key, project_layer_lr=0.05, **kwargs
        )
        self._data()


def make_host(**kwargs) -> BenchHost:
    return BenchHost(**kwargs)


def make_collaborator(**kwargs) -> BenchCollaborator:
    return BenchCollaborator(**kwargs)


def make_secure_host(**kwargs) -> SecureBenchHost:
    return SecureBenchHost(**kwargs)


def make_secure_collaborator(**kwargs) -> SecureBenchCollaborator:
    return SecureBenchCollaborator(**kwargs)
