"""Label defences the host applies to a gradient before it leaves for a collaborator (or, for
label DP, to the labels it trains on). Each is a small class built from its settings
(`party_node.privacy.settings`); all randomness comes from the generator passed in.

- `GaussianNoise`: clip every row to C, add N(0, (σC)²) — the textbook baseline;
- `Marvell` (Li et al., ICLR 2022), binary tasks: Gaussian noise whose covariance per class is
  optimised each batch to make the two classes' gradient distributions alike (minimal sum of
  KL divergences) under a power budget relative to the gap between the class means;
- `GradientRR`: randomised response on the label-carrying part of each row's gradient: the
  row's class mean is replaced by the mean of a randomly answered class (kept with
  probability e^ε/(e^ε+K−1)); the within-class part and the host's own training are untouched;
- `ClassNoise`: Gaussian noise only in the span of the batch's class-mean gradients (where
  the label is), each row's scaled to its own deviation there: Marvell's idea for K classes;
- `LabelRR`: label DP by randomised response with ε; the host trains on the answered labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def keep_probability(epsilon: float, classes: int) -> float:
    """Randomised response over `classes` answers: P(answer = truth) = e^ε / (e^ε + K − 1)."""
    return math.exp(epsilon) / (math.exp(epsilon) + classes - 1)


def randomised_response(
    labels: torch.Tensor, epsilon: float, classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Each label kept with `keep_probability`, else replaced by one of the others uniformly:
    ε-label-DP for one answer per label."""
    y = labels.long()
    keep = torch.rand(y.shape, generator=generator) < keep_probability(epsilon, classes)
    other = torch.randint(classes - 1, y.shape, generator=generator)
    other = other + (other >= y).long()
    return torch.where(keep, y, other).to(labels.dtype)


def _rows(grad: torch.Tensor) -> torch.Tensor:
    return grad.reshape(grad.shape[0], -1)


def _class_means(
    g: torch.Tensor, y: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each class's mean row (classes x d) and the classes present in the batch; None when
    fewer than two are present (one class's mean says nothing the batch does not)."""
    counts = torch.bincount(y, minlength=classes)
    present = (counts > 0).nonzero().flatten()
    if len(present) < 2:
        return None
    sums = torch.zeros(classes, g.shape[1], dtype=g.dtype).index_add_(0, y, g)
    return sums / counts.clamp(min=1).to(g.dtype).unsqueeze(1), present


class GaussianNoise:
    """Clip each row to C and add N(0, (σ·C)²). C is `clip` if given, else the batch's
    `clip_quantile` of row norms, so the noise follows the gradients' scale whatever the loss,
    batch size and stage of training."""

    def __init__(
        self, noise_multiplier: float, clip: float | None = None, clip_quantile: float = 0.5
    ) -> None:
        self.sigma, self.clip, self.quantile = noise_multiplier, clip, clip_quantile

    def __call__(
        self, grad: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        g = _rows(grad)
        norms = g.norm(dim=1, keepdim=True)
        if self.clip is not None:
            c = float(self.clip)
        else:
            c = float(torch.quantile(norms.double().flatten(), self.quantile))
        g = g * (c / norms.clamp(min=1e-30)).clamp(max=1.0)
        noise = torch.randn(g.shape, generator=generator, dtype=g.dtype) * (self.sigma * c)
        return (g + noise).reshape(grad.shape)


class GradientRR:
    """Randomised response on the class-mean part of each row's gradient (see module doc),
    over the classes present in the batch. The answered mean is amplified by c^-debias, where
    c = (K'q − 1)/(K' − 1) is how much of the label signal survives in expectation: debias 1
    makes the gradient unbiased (more variance), 0 keeps it bounded (signal shrunk by c)."""

    def __init__(self, epsilon: float, classes: int, debias: float = 0.0) -> None:
        self.epsilon, self.classes, self.debias = epsilon, classes, debias

    def __call__(
        self, grad: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        g = _rows(grad)
        y = labels.flatten().long()
        found = _class_means(g, y, self.classes)
        if found is None:
            return grad
        means, present = found
        k = len(present)
        center = means[present].mean(0)
        index = torch.full((self.classes,), -1, dtype=torch.long)
        index[present] = torch.arange(k)
        answer = present[randomised_response(index[y], self.epsilon, k, generator)]
        q = keep_probability(self.epsilon, k)
        c = (k * q - 1) / (k - 1)
        scale = c**-self.debias if self.debias and c > 0 else 1.0
        out = g - means[y] + center + scale * (means[answer] - center)
        return out.reshape(grad.shape)


class ClassNoise:
    """Gaussian noise confined to the span of the batch's class-mean gradients (centred): the
    directions along which the classes' gradients differ, i.e. that carry the label. Each row
    gets noise of σ times its own deviation from the batch centre within that span (so a
    high-loss row, whose direction says most, is hidden as well as a typical one); the rest of
    the row and the mean gradient are untouched, so the gradient stays unbiased."""

    def __init__(self, noise_multiplier: float, classes: int) -> None:
        self.sigma, self.classes = noise_multiplier, classes

    def __call__(
        self, grad: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        g = _rows(grad)
        found = _class_means(g, labels.flatten().long(), self.classes)
        if found is None:
            return grad
        means = found[0][found[1]]
        center = means.mean(0)
        _, s, vh = torch.linalg.svd((means - center).double(), full_matrices=False)
        basis = vh[s > s[0] * 1e-6].to(g.dtype)  # r x d, orthonormal rows
        if float(s[0]) == 0 or len(basis) == 0:  # the classes' gradients do not differ
            return grad
        coords = (g - center) @ basis.T
        scale = self.sigma * coords.norm(dim=1, keepdim=True) / math.sqrt(basis.shape[0])
        z = torch.randn(coords.shape, generator=generator, dtype=g.dtype)
        return (g + (z * scale) @ basis).reshape(grad.shape)


class LabelRR:
    """Label DP: the host trains each round on randomised-response labels."""

    def __init__(self, epsilon: float, classes: int) -> None:
        self.epsilon, self.classes = epsilon, classes

    def relabel(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return randomised_response(labels, self.epsilon, self.classes, generator)


class Marvell:
    """Marvell's optimised perturbation for binary labels (label 1 positive), power budget
    P = power · ‖ḡ₁ − ḡ₀‖² per batch. The covariances are restricted, as in the paper, to a
    part along Δg = ḡ₁ − ḡ₀ and an isotropic part orthogonal to it (four scalars, found on a
    grid); each class's rows then get Gaussian noise of its covariance."""

    def __init__(self, power: float) -> None:
        self.power = power
        self.last: tuple[torch.Tensor, np.ndarray] | None = None

    def __call__(
        self, grad: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        g = _rows(grad).double()
        pos = labels.flatten() > 0
        if bool(pos.any()) and not bool(pos.all()):
            g1, g0 = g[pos], g[~pos]
            delta = g1.mean(0) - g0.mean(0)
            gap = float(delta.norm())
            if gap > 0:
                d = g.shape[1]
                v1 = float(((g1 - g1.mean(0)) ** 2).sum(1).mean()) / d
                v0 = float(((g0 - g0.mean(0)) ** 2).sum(1).mean()) / d
                p = float(pos.double().mean())
                lam = _marvell_powers(gap, v0, v1, p, d, self.power * gap * gap)
                self.last = (delta / gap, lam)
        if self.last is None:  # no batch with both classes yet: nothing to shape noise on
            return grad
        u, (l0u, l0o, l1u, l1o) = self.last
        d = g.shape[1]
        out = g.clone()
        for mask, (along, ortho) in ((pos, (l1u, l1o)), (~pos, (l0u, l0o))):
            n = int(mask.sum())
            if n == 0:
                continue
            z = torch.randn(n, d, generator=generator, dtype=g.dtype)
            z_along = z @ u
            z_ortho = z - z_along.unsqueeze(1) * u
            scale_o = math.sqrt(max(ortho, 0.0) / max(d - 1, 1))
            out[mask] += math.sqrt(max(along, 0.0)) * z_along.unsqueeze(1) * u + scale_o * z_ortho
        return out.to(grad.dtype).reshape(grad.shape)


def _marvell_powers(
    gap: float, v0: float, v1: float, p: float, d: int, budget: float
) -> np.ndarray:
    """(λ0‖, λ0⊥, λ1‖, λ1⊥) minimising KL(P̃1‖P̃0)+KL(P̃0‖P̃1) for isotropic-Gaussian class
    models N(ḡk, vk·I) plus the added noise, subject to p·(λ1‖+λ1⊥)+(1−p)·(λ0‖+λ0⊥) = budget.
    The objective separates into the part along Δg and the part across it, so a grid over how
    the budget splits between the two parts and, within each, between the classes finds it in
    well under a millisecond (a solver took ~10 ms a batch); the grid's step is 1/64."""
    scale = gap * gap  # in units of ‖Δg‖², so numbers are near 1
    floor = 1e-12
    v0s, v1s, bud = max(v0 / scale, floor), max(v1 / scale, floor), budget / scale
    m = max(d - 1, 0)
    grid = np.linspace(0.0, 1.0, 65)
    share = grid[:, None]  # the part's budget, as a share of the total
    to_pos = grid[None, :]  # within the part, the share spent on positives
    spent = share * bud
    l1 = spent * to_pos / max(p, floor)
    l0 = spent * (1 - to_pos) / max(1 - p, floor)
    a0, a1 = v0s + l0, v1s + l1
    along = a1 / a0 + a0 / a1 + (1 / a0 + 1 / a1) - 2  # the means differ by 1 along Δg
    if m:
        b0, b1 = v0s + l0 / m, v1s + l1 / m
        across = m * (b1 / b0 + b0 / b1 - 2)
    else:
        across = np.zeros_like(along)
    best_along, best_across = along.min(1), across.min(1)
    # along gets share[i], across the rest: index i pairs with 64 − i
    total = best_along + best_across[::-1]
    i = int(total.argmin())
    ja, jo = int(along[i].argmin()), int(across[len(grid) - 1 - i].argmin())
    pos_along, pos_across = spent[i, 0] * grid[ja], spent[-1 - i, 0] * grid[jo]
    return (
        np.array(
            [
                (spent[i, 0] - pos_along) / max(1 - p, floor),
                (spent[-1 - i, 0] - pos_across) / max(1 - p, floor),
                pos_along / max(p, floor),
                pos_across / max(p, floor),
            ]
        )
        * scale
    )
