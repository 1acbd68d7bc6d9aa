"""The live leak metric: the host keeps a bounded sample of the gradients it sends in a round,
with their true labels, and at the end of the round scores them with the attacks a
collaborator could run (party_node.privacy.attacks). Bounded: at most `max_batches` batches of
`rows_per_batch` rows per collaborator (a reservoir over batches), rows wider than
`max_width` are randomly projected (cosines are kept, Johnson-Lindenstrauss)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from party_node.privacy import attacks
from party_node.privacy.scoring import matched_accuracy

#: Most distinct labels scored as classes; more (or non-integer labels) is not a class task.
MAX_CLASSES = 1000


def class_labels(labels: torch.Tensor) -> torch.Tensor | None:
    """Labels as class indices (one-hot rows by argmax), or None when they are not classes
    (regression targets, multi-label rows)."""
    y = labels.detach()
    if y.dim() == 2 and y.shape[1] > 1:
        if not bool(((y == 0) | (y == 1)).all()) or not bool((y.sum(1) == 1).all()):
            return None
        y = y.argmax(1)
    y = y.flatten()
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            return None
        y = y.round()
    y = y.long()
    if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= MAX_CLASSES:
        return None
    return y


@dataclass
class LeakScore:
    """One round's scores for one collaborator (AUCs for two classes, accuracy otherwise)."""

    rows: int
    classes: int
    cluster_accuracy: float | None = None
    cluster_chance: float | None = None
    direction_auc: float | None = None
    norm_auc: float | None = None
    seconds: float = 0.0

    def scores(self) -> dict[str, float]:
        names = ("cluster_accuracy", "cluster_chance", "direction_auc", "norm_auc")
        return {n: round(v, 4) for n in names if (v := getattr(self, n)) is not None}

    @property
    def leak(self) -> float:
        """The headline figure: cluster accuracy (multi-class) or the stronger AUC (binary)."""
        if self.cluster_accuracy is not None:
            return self.cluster_accuracy
        return max(self.direction_auc or 0.5, self.norm_auc or 0.5)


class LeakMeter:
    def __init__(
        self,
        generator: torch.Generator,
        rows_per_batch: int = 32,
        max_batches: int = 64,
        max_width: int = 128,
    ) -> None:
        self.generator = generator
        self.rows_per_batch, self.max_batches, self.max_width = (
            rows_per_batch,
            max_batches,
            max_width,
        )
        self.projection: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self.sample: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.seen = 0
        self.seconds = 0.0

    def add(self, grad: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep (a sample of) one outgoing batch; labels that are not classes are skipped."""
        started = time.perf_counter()
        y = class_labels(labels)
        if y is not None and y.numel() == grad.shape[0]:
            self.seen += 1
            slot = len(self.sample)
            if slot >= self.max_batches:
                slot = int(torch.randint(self.seen, (1,), generator=self.generator))
            if slot < self.max_batches:
                n = grad.shape[0]
                pick = torch.randperm(n, generator=self.generator)[: self.rows_per_batch]
                item = (self._narrow(grad.detach().reshape(n, -1)[pick]), y[pick])
                if slot == len(self.sample):
                    self.sample.append(item)
                else:
                    self.sample[slot] = item
        self.seconds += time.perf_counter() - started

    def _narrow(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.double()
        if rows.shape[1] <= self.max_width:
            return rows
        if self.projection is None or self.projection.shape[0] != rows.shape[1]:
            self.projection = torch.randn(
                rows.shape[1], self.max_width, generator=self.generator, dtype=torch.float64
            )
        return rows @ self.projection

    def take(self) -> RoundSample | None:
        """The round's sample, to score (here or on another thread); a new round starts.
        None when nothing was kept."""
        sample, spent = self.sample, self.seconds
        self.reset()
        return RoundSample(sample, spent) if sample else None

    def score(self) -> LeakScore | None:
        """Score the round's sample and start a new round; None when nothing was kept."""
        taken = self.take()
        return None if taken is None else taken.score(self.generator)


@dataclass
class RoundSample:
    """One round's kept (gradient rows, labels) of one collaborator, and the seconds spent
    keeping them."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]
    seconds: float

    def score(self, generator: torch.Generator) -> LeakScore:
        """The attacks' scores (their random draws from `generator`)."""
        started = time.perf_counter()
        sample = self.batches
        grads = torch.cat([g for g, _ in sample])
        labels = torch.cat([y for _, y in sample])
        classes = int(labels.max()) + 1
        result = LeakScore(rows=int(labels.numel()), classes=classes)
        if classes <= 2:
            result.direction_auc = attacks.direction_auc(sample, generator)
            result.norm_auc = attacks.norm_auc(grads, labels)
        else:
            clusters = attacks.cosine_kmeans(grads, classes, generator, restarts=4)
            result.cluster_accuracy = matched_accuracy(clusters, labels)
            shuffled = labels[torch.randperm(labels.numel(), generator=generator)]
            result.cluster_chance = matched_accuracy(clusters, shuffled)
        result.seconds = self.seconds + time.perf_counter() - started
        return result
