"""The label-privacy tool in one process: a small split model really trained, the attacks
run on exactly the gradients the collaborator would receive; they recover the labels from
exact gradients and not from defended ones. Settings fail with messages naming the fix."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.label_leak import DEFAULTS
from party_node.errors import ConfigError
from party_node.privacy import LeakMeter, attacks, class_labels, parse_defence
from party_node.privacy.defences import keep_probability, randomised_response
from party_node.privacy.meter import RoundSample
from party_node.privacy.scoring import auc, matched_accuracy
from party_node.runtime.label_privacy import HostPrivacy
from tests import synthetic as syn


def split_training(classes: int, defence=None, rounds: int = 1, positives: float = 0.5):
    """Host (weak columns, labels, top model) and collaborator (informative columns, bottom
    model); returns per-batch (gradient sent to the collaborator, labels) of the last round,
    and the collaborator's bottom model."""
    g = torch.Generator().manual_seed(3)
    rows, batch = 768, 64
    if classes == 2:
        y = (torch.rand(rows, generator=g) < positives).long()
    else:
        y = torch.randint(classes, (rows,), generator=g)
    centers = torch.randn(classes, 6, generator=g) * 1.5
    x_c = centers[y] + torch.randn(rows, 6, generator=g)
    x_h = torch.randn(rows, 3, generator=g) + 0.3 * y.unsqueeze(1)
    torch.manual_seed(5)
    bottom = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
    top = nn.Sequential(nn.Linear(11, 16), nn.ReLU(), nn.Linear(16, classes))
    opt_b = torch.optim.SGD(bottom.parameters(), lr=0.1, momentum=0.9)
    opt_t = torch.optim.SGD(top.parameters(), lr=0.1, momentum=0.9)
    noise = torch.Generator().manual_seed(11)
    sent = []
    for _ in range(rounds):
        sent = []
        for s in range(0, rows, batch):
            xb, xh, yb = x_c[s : s + batch], x_h[s : s + batch], y[s : s + batch]
            feats = bottom(xb)
            leaf = feats.detach().requires_grad_(True)
            loss = F.cross_entropy(top(torch.cat([xh, leaf], 1)), yb)
            opt_t.zero_grad()
            loss.backward()
            grad = leaf.grad if defence is None else defence(leaf.grad, yb, noise)
            sent.append((grad, yb))
            opt_b.zero_grad()
            feats.backward(grad)
            opt_b.step()
            opt_t.step()
    return sent, bottom, (x_c, y)


def cluster_score(sent, classes: int) -> float:
    grads = torch.cat([gr for gr, _ in sent])
    labels = torch.cat([y for _, y in sent])
    return attacks.cluster_accuracy(grads, labels, classes, torch.Generator().manual_seed(0))


def test_clustering_recovers_multiclass_labels_unless_defended() -> None:
    sent, _, _ = split_training(4)
    assert cluster_score(sent, 4) > 0.7  # chance 0.25
    noise = parse_defence({"kind": "noise", "noise_multiplier": 2}).gradient_defence()
    assert cluster_score(split_training(4, noise)[0], 4) < 0.4  # chance 0.25 + sampling
    rr = parse_defence({"kind": "gradient_rr", "epsilon": 0, "classes": 4}).gradient_defence()
    assert cluster_score(split_training(4, rr)[0], 4) < 0.4
    # the default for more than two classes (bench/label_leak.py, docs/privacy.md)
    span = parse_defence({**DEFAULTS["digits"], "classes": 4})
    assert cluster_score(split_training(4, span.gradient_defence())[0], 4) < 0.4


def test_class_noise_is_unbiased_and_confined_to_the_class_mean_span() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 3
    # three classes whose means differ only in columns 0 and 1; columns 2..7 carry no label
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    same = torch.randn(1, 6, generator=g).expand(64, 6)
    grad = torch.cat([means[y] + 0.1 * torch.randn(64, 2, generator=g), same], 1)
    defence = parse_defence({"kind": "class_noise", "noise_multiplier": 1, "classes": 3})
    draws = torch.stack([defence.gradient_defence()(grad, y, g) for _ in range(1000)])
    assert torch.allclose(draws[:, :, 2:], same.expand(1000, 64, 6), atol=1e-5)  # untouched
    assert (draws.mean(0) - grad).abs().max() < 0.15  # unbiased
    host = HostPrivacy({"kind": "class_noise", "noise_multiplier": 1, "classes": 3})
    sent = host.outgoing("c1", grad, F.one_hot(y, 3).float())  # the host's path, one-hot labels
    assert sent.shape == grad.shape and torch.allclose(sent[:, 2:], same, atol=1e-5)
    assert not torch.allclose(sent[:, :2], grad[:, :2])
    assert draws[:, :, :2].std(0).mean() > 0.3  # noise where the label is


def test_averaging_across_rounds_undoes_fresh_per_round_noise() -> None:
    """A collaborator knows each row's id: averaging a sample's gradient over rounds cancels
    noise drawn fresh each round, which a per-round score does not show."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    centers = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    grad = centers[y] + 0.2 * torch.randn(400, 8, generator=g)
    rr = parse_defence({"kind": "gradient_rr", "epsilon": 0.5, "classes": 4, "debias": 1})
    averager, ids = attacks.RoundAverager(), [f"id{i}" for i in range(400)]
    per_round = []
    for _ in range(60):
        sent = rr.gradient_defence()(grad, y, g)
        per_round.append(attacks.cluster_accuracy(sent, y, 4, g))
        averager.add(ids, sent, y)
    averaged, labels = averager.averaged()
    assert max(per_round) < 0.45  # 0.41 measured; chance 0.25, q = 0.35 at ε 0.5, 4 classes
    assert torch.equal(labels, y[torch.tensor(sorted(range(400), key=lambda i: f"id{i}"))])
    assert attacks.cluster_accuracy(averaged, labels, 4, g) > 0.6  # 0.695 measured


def test_direction_and_norm_attacks_on_a_binary_task_unless_defended() -> None:
    g = torch.Generator().manual_seed(0)
    sent, _, _ = split_training(2)
    assert attacks.direction_auc(sent, g) > 0.95
    marvell = parse_defence({"kind": "marvell", "power": 4}).gradient_defence()
    assert attacks.direction_auc(split_training(2, marvell)[0], g) < 0.65
    default = parse_defence(DEFAULTS["ge5"]).gradient_defence()  # docs/privacy.md
    assert attacks.direction_auc(split_training(2, default)[0], g) < 0.65
    # Rare positives get the larger gradients: the norm attack works when classes are skewed
    skewed, _, _ = split_training(2, positives=0.1)
    grads, labels = torch.cat([gr for gr, _ in skewed]), torch.cat([y for _, y in skewed])
    assert attacks.norm_auc(grads, labels) > 0.8


def test_model_completion_from_known_labels() -> None:
    _, bottom, (x, y) = split_training(4, rounds=3)
    with torch.no_grad():
        features = bottom(x)
    g = torch.Generator().manual_seed(0)
    acc = attacks.completion_accuracy(features[:512], y[:512], features[512:], y[512:], 40, g)
    assert acc > 0.8  # chance 0.25


def test_scoring_primitives() -> None:
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == 0.5  # ties
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) == 0.5  # one class only
    # Cluster names do not matter: a relabelled perfect clustering is perfect
    assert matched_accuracy(torch.tensor([2, 2, 0, 1]), torch.tensor([0, 0, 1, 2])) == 1.0
    g = torch.Generator().manual_seed(0)
    y = torch.randint(10, (20000,), generator=g)
    kept = float((randomised_response(y, math.log(3), 10, g) == y).double().mean())
    assert abs(kept - keep_probability(math.log(3), 10)) < 0.01  # 3 / 12 = 0.25


def test_meter_is_bounded_and_scores_each_round() -> None:
    meter = LeakMeter(torch.Generator().manual_seed(0), rows_per_batch=8, max_batches=5)
    sent, _, _ = split_training(4)
    for grad, y in sent:
        meter.add(grad, y)
    assert len(meter.sample) == 5 and all(len(y) == 8 for _, y in meter.sample)
    score = meter.score()
    assert score is not None and score.rows == 40 and score.classes == 4
    assert score.cluster_accuracy is not None and score.cluster_chance is not None
    assert meter.score() is None  # a new round starts empty
    # wide rows are projected down, cosines kept
    wide = LeakMeter(torch.Generator().manual_seed(0), max_width=16)
    wide.add(torch.randn(32, 300), torch.randint(3, (32,)))
    assert wide.sample[0][0].shape == (32, 16)


def test_host_scores_the_leak_beside_training_not_inside_the_round(monkeypatch) -> None:
    """end_round hands the round's sample to the scoring thread and returns: the k-means is
    not part of the host's round (docs/performance.md); the scores arrive for that round."""
    privacy = HostPrivacy(None)
    for grad, y in split_training(4)[0]:
        privacy.outgoing("c1", grad, y)
    release, scored_on = threading.Event(), []
    score = RoundSample.score

    def held_back(sample: RoundSample, generator: torch.Generator):
        scored_on.append(threading.get_ident())
        release.wait(20)  # bounded: a scoring inside end_round would block it this long
        return score(sample, generator)

    monkeypatch.setattr(RoundSample, "score", held_back)
    privacy.end_round(1)
    assert privacy.scored() == []  # round 1 is still being scored, and end_round returned
    release.set()
    [(round_no, scores)] = privacy.scored(wait=True)
    assert round_no == 1 and set(scores) == {"c1"}
    assert scores["c1"].cluster_accuracy > scores["c1"].cluster_chance + 0.3  # chance ~0.25
    assert scored_on and scored_on[0] != threading.get_ident()
    privacy.end_round(2)  # nothing sent since: nothing to score
    assert privacy.scored(wait=True) == []


def test_class_labels() -> None:
    assert class_labels(torch.tensor([0.0, 1.0, 1.0])).tolist() == [0, 1, 1]
    assert class_labels(torch.eye(3)[[2, 0]]).tolist() == [2, 0]
    assert class_labels(torch.tensor([0.2, 1.5])) is None  # regression targets
    assert class_labels(torch.tensor([[1.0, 1.0, 0.0]])) is None  # multi-label rows


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"kind": "marvell"}, "label_defence 'marvell' is invalid: power: Field required"),
        (
            {"kind": "noise", "noise_multiplier": -1},
            "label_defence 'noise' is invalid: noise_multiplier: Input should be greater than 0 "
            "(got -1)",
        ),
        (
            {"kind": "label_rr", "epsilon": 1, "classes": 10, "eps": 2},
            "label_defence 'label_rr' is invalid: eps: Extra inputs are not permitted",
        ),
        ({"kind": "dp"}, "label_defence kind 'dp' is unknown; use one of none, noise, marvell"),
        (3, "label_defence must be a dict such as {'kind': 'marvell', 'power': 4}, got int"),
    ],
)
def test_bad_settings_fail_with_the_setting_named(setting, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_defence(setting)
    assert message in str(caught.value)
    host = syn.SynthHost("h", ["h", "c1"], 32, 1, syn.Faults(""))
    with pytest.raises(ConfigError) as caught:  # the scheduler checks when it is set
        host.label_defence = setting
    assert message in str(caught.value)


def test_a_defence_that_needs_classes_refuses_other_labels() -> None:
    marvell = HostPrivacy({"kind": "marvell", "power": 1})
    with pytest.raises(ConfigError) as caught:
        marvell.labels_for_training(torch.tensor([0, 3, 1]))
    assert "marvell is for binary tasks, use gradient_rr or noise for more classes" in str(
        caught.value
    )
    rr = HostPrivacy({"kind": "label_rr", "epsilon": 1, "classes": 2})
    with pytest.raises(ConfigError, match=r"needs class labels 0\.\.1"):
        rr.labels_for_training(torch.tensor([0.5, 0.25]))


def test_label_dp_randomises_training_labels_only() -> None:
    privacy = HostPrivacy({"kind": "label_rr", "epsilon": 0, "classes": 2})
    y = torch.zeros(4000, dtype=torch.long)
    assert 0.45 < float(privacy.labels_for_training(y).double().mean()) < 0.55
    assert privacy.gradient_defence is None
    one_hot = privacy.labels_for_training(torch.eye(2)[torch.zeros(8, dtype=torch.long)])
    assert one_hot.shape == (8, 2) and bool((one_hot.sum(1) == 1).all())  # format kept
