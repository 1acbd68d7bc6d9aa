"""`make demo SEED=n`: every party seeds its own process from the task's seed and its
feature_key, so a run is reproducible for a seed while the parties' models still start
from different weights (one shared seed would give host and collaborator identical nets)."""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import torch


def seed_process(seed: int, feature_key: str) -> None:
    """Seed torch, numpy and random for this party (model inits, dropout, anything local)."""
    party_seed = (int(seed) * 1_000_003 + zlib.crc32(feature_key.encode())) % 2**32
    torch.manual_seed(party_seed)
    np.random.seed(party_seed)
    random.seed(party_seed)


def pop_seed(kwargs: dict[str, Any], feature_key: str) -> dict[str, Any]:
    """Take an optional `seed` out of a factory's kwargs and seed this process with it."""
    seed = kwargs.pop("seed", None)
    if seed is not None:
        seed_process(seed, kwargs.get("feature_key", feature_key))
    return kwargs
