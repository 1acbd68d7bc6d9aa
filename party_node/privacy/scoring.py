"""How well a guess matches the labels: ROC AUC of a score (binary attacks) and the accuracy of
a clustering under the best cluster-to-label matching (multi-class attacks)."""

from __future__ import annotations

import numpy as np
import torch


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC of `scores` for the boolean `positive` (ties count one half); 0.5 when one
    class is missing, so an empty comparison never reads as a leak."""
    scores = scores.detach().double().flatten().cpu()
    positive = positive.bool().flatten().cpu()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties sharing their mean rank (Mann-Whitney)."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    del values
    return mean_rank[inverse]


def matched_accuracy(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of `clusters` as label guesses once each cluster is named after the label it
    matches best (one-to-one, Hungarian): what an attacker gets after learning one labelled
    example per cluster."""
    from scipy.optimize import linear_sum_assignment  # scipy is slow to import

    clusters = clusters.flatten().cpu().long()
    labels = labels.flatten().cpu().long()
    if labels.numel() == 0:
        return 0.0
    _, c = torch.unique(clusters, return_inverse=True)
    _, y = torch.unique(labels, return_inverse=True)
    table = np.zeros((int(c.max()) + 1, int(y.max()) + 1))
    np.add.at(table, (c.numpy(), y.numpy()), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / labels.numel())


def majority_share(labels: torch.Tensor) -> float:
    """Chance level of a label guess: the share of the most frequent label."""
    labels = labels.flatten().long()
    if labels.numel() == 0:
        return 0.0
    return float(torch.bincount(labels - labels.min()).max() / labels.numel())
