"""Label inference from what a collaborator receives: the gradient of the loss w.r.t. its
features (plain mode) or w.r.t. its input to the encrypted projection (secure mode). Each
attack takes those rows and returns a guess; `party_node.privacy.scoring` grades the guess.

- norm scoring (Li et al., ICLR 2022): rarer-class rows get larger gradients;
- direction scoring (same paper): with one known positive, rows whose gradient points its way
  are positives (cosine similarity);
- cosine clustering (multi-class): k-means on gradient directions, one cluster per label;
- model completion (Fu et al., USENIX Security 2022): train a head on the collaborator's own
  features from k known labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from party_node.privacy.scoring import auc, matched_accuracy


def flat(grads: torch.Tensor) -> torch.Tensor:
    return grads.detach().reshape(grads.shape[0], -1).double()


def norm_scores(grads: torch.Tensor) -> torch.Tensor:
    """Norm attack: the larger a row's gradient, the more likely it is positive."""
    return flat(grads).norm(dim=1)


def direction_scores(grads: torch.Tensor, known_positive: int) -> torch.Tensor:
    """Direction attack: cosine similarity of every row's gradient to a known positive's."""
    g = F.normalize(flat(grads), dim=1)
    return g @ g[known_positive]


def norm_auc(grads: torch.Tensor, labels: torch.Tensor) -> float:
    return auc(norm_scores(grads), labels.flatten() > 0)


def direction_auc(
    batches: list[tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator, refs: int = 4
) -> float:
    """Mean AUC of the direction attack over batches, the attacker knowing one positive row in
    each batch (Li et al.'s setting); averaged over up to `refs` choices of that row."""
    results = []
    for grads, labels in batches:
        positive = labels.flatten() > 0
        candidates = positive.nonzero().flatten()
        if len(candidates) == 0 or bool(positive.all()):
            continue
        pick = candidates[torch.randperm(len(candidates), generator=generator)[:refs]]
        g = F.normalize(flat(grads), dim=1)
        for ref in pick.tolist():
            others = torch.ones_like(positive)
            others[ref] = False  # the known row is not scored
            results.append(auc((g @ g[ref])[others], positive[others]))
    return float(sum(results) / len(results)) if results else 0.5


def cosine_kmeans(
    grads: torch.Tensor, k: int, generator: torch.Generator, iters: int = 30, restarts: int = 8
) -> torch.Tensor:
    """Spherical k-means (k-means++ seeding) on gradient directions; the cluster of each row.
    Keeps the restart with the highest total cosine similarity."""
    x = F.normalize(flat(grads), dim=1)
    best, best_fit = torch.zeros(x.shape[0], dtype=torch.long), -float("inf")
    for _ in range(restarts):
        centers = _plus_plus(x, k, generator)
        for _ in range(iters):
            assign = (x @ centers.T).argmax(dim=1)
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            empty = sums.norm(dim=1) == 0
            sums[empty] = centers[empty]
            new = F.normalize(sums, dim=1)
            if torch.allclose(new, centers):
                break
            centers = new
        sim = x @ centers.T
        fit = float(sim.max(dim=1).values.sum())
        if fit > best_fit:
            best, best_fit = sim.argmax(dim=1), fit
    return best


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    centers = [x[first]]
    dist = 1 - x @ x[first]
    for _ in range(1, k):
        weights = torch.nan_to_num(dist, nan=0.0).clamp(min=0) + 1e-12
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centers.append(x[nxt])
        dist = torch.minimum(dist, 1 - x @ x[nxt])
    return torch.stack(centers)


def cluster_accuracy(
    grads: torch.Tensor, labels: torch.Tensor, k: int, generator: torch.Generator
) -> float:
    """Cosine-clustering attack: label accuracy of k-means on gradient directions, each
    cluster named after its best-matching label (chance: the majority label's share)."""
    return matched_accuracy(cosine_kmeans(grads, k, generator), labels)


def completion_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    known: int,
    generator: torch.Generator,
    steps: int = 300,
) -> float:
    """Model completion: the collaborator labels `known` of its training rows (bought, or
    guessed from the attacks above), fits a softmax head on its own features of those rows,
    and predicts every test row. Returns the test accuracy."""
    classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    pick = torch.randperm(train_features.shape[0], generator=generator)[:known]
    x, y = train_features[pick].detach().double(), train_labels[pick].long()
    mean = x.mean(0)
    std = x.std(0).clamp(min=1e-6) if known > 1 else torch.ones_like(mean)
    head = torch.zeros(x.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([head], max_iter=steps, line_search_fn="strong_wolfe")

    def logits(features: torch.Tensor) -> torch.Tensor:
        z = (features.detach().double() - mean) / std
        return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], 1) @ head

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits(x), y) + 1e-3 * head.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((logits(test_features).argmax(1) == test_labels.long()).double().mean())


class RoundAverager:
    """The collaborator's cross-round attack: it knows each row's id, so it can average the
    direction of every sample's gradient over the rounds it has seen; fresh per-round noise
    averages out, and the attacks above then run on the averages (one row per sample)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.labels: dict[str, int] = {}

    def add(self, ids: list[str], grads: torch.Tensor, labels: torch.Tensor) -> None:
        rows = F.normalize(flat(grads), dim=1)
        for i, row, y in zip(ids, rows, labels.flatten().tolist(), strict=True):
            self.sums[i] = self.sums[i] + row if i in self.sums else row.clone()
            self.labels[i] = int(y)

    def averaged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean direction of each sample seen, its label), in id order."""
        ids = sorted(self.sums)
        return torch.stack([self.sums[i] for i in ids]), torch.tensor([self.labels[i] for i in ids])
