"""The MNIST-halves task trained in one process as the composed model, with the split at the
collaborator's features exactly where the host's runtime sends the gradient: each batch the
host-side gradient passes through `outgoing` (the label defence) and what the collaborator
would receive is recorded. Plain federated training is this computation (tests/test_equivalence);
secure mode adds the projection z = X·W (no bias) whose δ = ∂L/∂z the host perturbs, and the
collaborator receives ∂L/∂X = δ'·Wᵀ. Used by `make privacy-eval` and bench/label_leak."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn, optim

from examples.mnist_halves import data
from examples.mnist_halves.model import FEATURE_DIM, HalfConvNet, InferModule
from party_node.hetero_nn import aligned_order
from party_node.privacy import parse_defence


def task_labels(labels: torch.Tensor, task: str) -> torch.Tensor:
    """'digits': the ten digits; 'ge5': the binary task digit >= 5."""
    return (labels >= 5).long() if task == "ge5" else labels


@dataclass
class RoundRecord:
    """What the collaborator received in one round (per batch), the true labels, and the ids
    of each batch's rows (which the collaborator knows: it can link rows across rounds)."""

    grads: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    ids: list[list[str]] = field(default_factory=list)
    seconds_outgoing: float = 0.0


@dataclass
class Composed:
    task: str = "digits"
    mode: str = "plain"
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0
    root: str = field(default_factory=data.data_root)

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        classes = 2 if self.task == "ge5" else 10
        self.host, self.collab = HalfConvNet(), HalfConvNet()
        width = FEATURE_DIM
        self.proj: dict[str, nn.Module] = {}
        if self.mode == "secure":
            width = 10
            self.proj = {k: nn.Linear(FEATURE_DIM, width, bias=False) for k in ("h", "c")}
        self.infer = InferModule(in_features=2 * width)
        self.infer.fc2 = nn.Linear(20, classes)
        host_params = [*self.host.parameters(), *self.infer.parameters()]
        for p in self.proj.values():
            host_params += list(p.parameters())
        self.opts = [
            optim.SGD(host_params, lr=self.lr, momentum=0.9),
            optim.SGD(self.collab.parameters(), lr=self.lr, momentum=0.9),
        ]
        common = set(data.local_ids(data.HOST_IDS)) & set(data.local_ids(data.COLLABORATOR_IDS))
        train, test = data.split(common)
        self.train_ids, self.test_ids = sorted(train), sorted(test)

    def train_round(
        self, round_no: int, defence: object = None, generator: torch.Generator | None = None
    ) -> RoundRecord:
        """One round under `defence` (a label_defence setting; None: exact gradients), its
        randomness from `generator`."""
        setting = parse_defence(defence)
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        gd, ld = setting.gradient_defence(), setting.label_defence()
        record = RoundRecord()
        for m in (self.host, self.collab, self.infer):
            m.train()
        order = aligned_order(self.train_ids, round_no)
        left = data.batches(self.root, order, False, self.batch_size, "left")
        right = data.batches(self.root, order, False, self.batch_size, "right")
        for (xl, y), (xr, _) in zip(left, right, strict=True):
            y = task_labels(y, self.task)
            y_train = ld.relabel(y, gen) if ld else y
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            feat_c = self.collab(xr)
            leaf_x = feat_c.detach().requires_grad_(True)
            own = self.host(xl)
            if self.proj:
                own = self.proj["h"](own)
                z = self.proj["c"](leaf_x)
                cut = z.detach().requires_grad_(True)
            else:
                cut = leaf_x
            loss = F.nll_loss(self.infer(torch.cat([own, cut], dim=1)), y_train)
            loss.backward()
            grad = cut.grad
            if gd is not None:  # the host's defence uses the true labels
                started = time.perf_counter()
                grad = gd(grad, y, gen)
                record.seconds_outgoing += time.perf_counter() - started
            if self.proj:
                z.backward(grad)  # W's gradient Xᵀδ' and the collaborator's ∂L/∂X = δ'·Wᵀ
                grad = leaf_x.grad
            feat_c.backward(grad)
            record.grads.append(grad.detach().clone())
            record.labels.append(y)
            start = len(record.ids) * self.batch_size
            record.ids.append(order[start : start + len(y)])
            for o in self.opts:
                o.step()
        return record

    @torch.no_grad()
    def test_accuracy(self) -> float:
        for m in (self.host, self.collab, self.infer):
            m.eval()
        correct = total = 0
        left = data.batches(self.root, self.test_ids, True, 1000, "left")
        right = data.batches(self.root, self.test_ids, True, 1000, "right")
        for (xl, y), (xr, _) in zip(left, right, strict=True):
            y = task_labels(y, self.task)
            own, other = self.host(xl), self.collab(xr)
            if self.proj:
                own, other = self.proj["h"](own), self.proj["c"](other)
            out = self.infer(torch.cat([own, other], dim=1))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
        return correct / total

    @torch.no_grad()
    def collaborator_features(self, test: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The collaborator's own feature-model outputs and the true labels (for completion)."""
        self.collab.eval()
        ids = self.test_ids if test else self.train_ids
        feats, labels = [], []
        for xr, y in data.batches(self.root, ids, test, 1000, "right"):
            feats.append(self.collab(xr))
            labels.append(task_labels(y, self.task))
        self.collab.train()
        return torch.cat(feats), torch.cat(labels)
