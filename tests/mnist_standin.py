"""An MNIST-format stand-in the tests write themselves, so the seed workflow runs on a machine
without the data set: the four raw IDX files torchvision reads (uncompressed, under
`<root>/MNIST/raw/`), with as many images as the example's ids need, and a pattern a model
learns in one round (each digit lights its own band of rows in both image halves)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

#: The example's ids reach train image 29,999 and test image 6,999 (examples/mnist_halves).
N_TRAIN, N_TEST = 30_000, 10_000


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for digit in range(10):
        rows = slice(2 + 2 * digit, 4 + 2 * digit)
        images[labels == digit, rows, :] = 255
    return images


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, type 0x08 = ubyte, number of dimensions), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, seed: int = 0) -> Path:
    """Write the stand-in under `root` (returned, to use as DATA_ROOT)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", _images(labels, rng))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def has_mnist(root: str | Path) -> bool:
    """Whether `root` holds the real data set (torchvision's raw files)."""
    raw = Path(root) / "MNIST" / "raw"
    return all(
        (raw / f"{p}-{k}-idx{d}-ubyte").is_file() or (raw / f"{p}-{k}-idx{d}-ubyte.gz").is_file()
        for p in ("train", "t10k")
        for k, d in (("images", 3), ("labels", 1))
    )
