"""The global random states a party's training consumes (torch, numpy, Python's `random`), as
one checkpointable record: a resumed task draws exactly the numbers the uninterrupted one drew
(dropout masks, a user's shuffles and augmentations)."""

from __future__ import annotations

import random
from typing import Any

import torch

try:  # numpy comes with torch's and TenSEAL's wheels, but the runtime does not need it
    import numpy as np
except ImportError:  # pragma: no cover
    np = None


def capture() -> dict[str, Any]:
    """The current states, in types `torch.load(weights_only=True)` accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    return state


def restore(state: dict[str, Any] | torch.Tensor) -> None:
    """Set the states `capture()` returned (a bare tensor: torch's only, older checkpoints)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state.get("numpy")
    if np is not None and saved is not None:
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"])
        )
