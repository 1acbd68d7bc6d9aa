"""The user hooks serving calls, checked like training checks iterate_*_feature.

`predict_feature(feature_model, ids)` reads this party's features for new ids (every
party); `predict_a_batch(feature_projection)` fuses them (host; traced into the bundle when
the task finishes). A party whose scheduler lacks its hook refuses to serve, saying which
hook and what it must return.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from party_node.errors import ConfigError, HookFailed

log = logging.getLogger("heteronn")


class BadReturn(ValueError):
    """predict_feature returned something unusable (our message: names no id)."""


@dataclass
class FeatureRows:
    """One party's answer for a list of ids: which it holds, and their rows in id order."""

    found: list[bool]
    features: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


def require_predict_feature(scheduler: Any) -> None:
    from party_node.hetero_nn.base import HeteroNNScheduler

    if type(scheduler).predict_feature is HeteroNNScheduler.predict_feature:
        raise ConfigError(
            f"{type(scheduler).__name__} defines no predict_feature(feature_model, ids): this "
            f"{scheduler._role} cannot read its features for new ids, so it cannot serve. Add "
            "it (like iterate_test_feature for one batch): return feature_model(rows) with one "
            "row per id, or (found_ids, feature_model(rows)) when some ids are not held here"
        )


class FeatureSource:
    """Calls the party's predict_feature under a lock (user code need not be thread-safe)
    and without autograd, then checks what it returned."""

    def __init__(self, scheduler: Any, feature_model: torch.nn.Module, party: str) -> None:
        require_predict_feature(scheduler)
        self.scheduler = scheduler
        self.feature_model = feature_model
        self.party = party
        self._lock = threading.Lock()

    def read(self, ids: Sequence[str]) -> FeatureRows:
        try:
            with self._lock, torch.no_grad():
                value = self.scheduler.predict_feature(self.feature_model, list(ids))
            return check_rows(value, ids)
        except BadReturn as exc:
            log.error("predict_feature of %s: %s", self.party, exc)
            raise HookFailed(f"{self.party} could not read its features (see its log)") from None
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            # The message may quote an id (KeyError('123')): the type and place only.
            log.error("predict_feature of %s raised %s%s", self.party, type(exc).__name__, at)
            raise HookFailed(
                f"{self.party} could not read its features ({type(exc).__name__} in "
                "predict_feature; see its log)"
            ) from None


def check_rows(value: Any, ids: Sequence[str]) -> FeatureRows:
    """Normalize predict_feature's result: a tensor (every id held) or (found_ids, tensor)."""
    if isinstance(value, torch.Tensor):
        found = [True] * len(ids)
        features = value
    elif isinstance(value, tuple | list) and len(value) == 2:
        found_ids, features = value
        if not isinstance(features, torch.Tensor):
            raise BadReturn("predict_feature must return (found_ids, tensor)")
        found = _found_mask(list(found_ids), ids)
    else:
        raise BadReturn(
            f"predict_feature returned {type(value).__name__}; return a tensor or "
            "(found_ids, tensor)"
        )
    rows = sum(found)
    if features.dim() < 1 or features.shape[0] != rows:
        raise BadReturn(
            f"predict_feature returned {features.shape[0] if features.dim() else 0} rows for "
            f"{rows} found ids"
        )
    features = features.detach()
    if not features.is_floating_point():
        features = features.float()
    if not bool(torch.isfinite(features).all()):
        raise BadReturn("predict_feature returned NaN or infinite features")
    return FeatureRows(found, features)


def _found_mask(found_ids: list[Any], ids: Sequence[str]) -> list[bool]:
    """found_ids must be the held ids in the order of `ids`."""
    mask = []
    j = 0
    for item in ids:
        hit = j < len(found_ids) and found_ids[j] == item
        mask.append(hit)
        j += hit
    if j != len(found_ids):
        raise BadReturn(
            "predict_feature's found_ids must be a sub-list of ids, in the order of ids"
        )
    return mask
