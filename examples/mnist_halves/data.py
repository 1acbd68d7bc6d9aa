"""MNIST for the example, loaded once into tensors (the seed re-decodes every image through
PIL each round). Ids follow the seed: train image i has id "i", test image j has id
"100000 + j"; the host holds train 0-19999 and test 0-4999, the collaborator train
10000-29999 and test 3000-6999, so the intersection is 10,000 train and 2,000 test rows."""

from __future__ import annotations

import functools
import os

import torch
import torchvision

TEST_OFFSET = 100_000
HOST_IDS = (range(0, 20_000), range(0, 5_000))
COLLABORATOR_IDS = (range(10_000, 30_000), range(3_000, 7_000))


class MnistMissing(RuntimeError):
    """MNIST is neither under the data root nor downloadable (offline)."""


def data_root() -> str:
    return os.environ.get("DATA_ROOT", "./data")


@functools.lru_cache(maxsize=4)
def mnist(root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N x 1 x 28 x 28, normalized as in the seed; labels N)."""
    try:
        dataset = torchvision.datasets.MNIST(root, train=train, download=True)
    except RuntimeError as exc:  # torchvision's download error lists every mirror it tried
        reason = str(exc).strip().splitlines()[-1].strip("<>")
        raise MnistMissing(
            f"MNIST is not under DATA_ROOT={root} and could not be downloaded ({reason}); "
            "set DATA_ROOT to the folder that holds MNIST/raw, e.g. "
            "`make demo DATA_ROOT=/path/to/data`"
        ) from None
    images = dataset.data.unsqueeze(1).float().div_(255.0)
    images = images.sub_(0.1307).div_(0.3081)
    return images, dataset.targets.clone()


def local_ids(holding: tuple[range, range]) -> list[str]:
    train, test = holding
    return [str(i) for i in train] + [str(TEST_OFFSET + j) for j in test]


def split(id_intersection: set[str]) -> tuple[set[str], set[str]]:
    """Train ids are below TEST_OFFSET, test ids above: the same rule at every party."""
    train = {i for i in id_intersection if int(i) < TEST_OFFSET}
    return train, set(id_intersection) - train


def rows(ids: list[str], test: bool) -> torch.Tensor:
    offset = TEST_OFFSET if test else 0
    return torch.tensor([int(i) - offset for i in ids], dtype=torch.long)


def batches(
    root: str, ids: list[str], test: bool, batch_size: int, half: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(half images, labels) per batch, in the order of `ids`."""
    images, labels = mnist(root, train=not test)
    index = rows(ids, test)
    cols = slice(0, 14) if half == "left" else slice(14, 28)
    out = []
    for start in range(0, len(index), batch_size):
        part = index[start : start + batch_size]
        out.append((images[part][:, :, :, cols], labels[part]))
    return out


def held(holding: tuple[range, range], ids: list[str]) -> list[str]:
    """The ids of `ids` a party with `holding` has data for, in order (serving)."""
    train, test = holding
    out = []
    for item in ids:
        if not item.isdigit():
            continue
        n = int(item)
        if n in train or (n >= TEST_OFFSET and n - TEST_OFFSET in test):
            out.append(item)
    return out


def half_images(root: str, ids: list[str], half: str) -> torch.Tensor:
    """The `half` of the images of `ids` (train or test by id), for predict_feature."""
    if not ids:
        return torch.empty(0, 1, 28, 14)
    cols = slice(0, 14) if half == "left" else slice(14, 28)
    test = torch.tensor([int(i) >= TEST_OFFSET for i in ids])
    rows = torch.tensor([int(i) % TEST_OFFSET for i in ids])
    out = torch.empty(len(ids), 1, 28, 14)
    for is_test, mask in ((False, ~test), (True, test)):
        if bool(mask.any()):
            images, _ = mnist(root, train=not is_test)
            out[mask] = images[rows[mask]][:, :, :, cols]
    return out
