"""The host's prediction of one batch of distinct ids: its own features and every
collaborator's projection fetched concurrently, aligned by id, fused by the bundle's
predictor. Ids some party does not hold are answered NOT_FOUND naming those parties; the
others are predicted. Pure: collaborators come in as `ProjectionSource`s."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

import torch

from party_node.errors import HookFailed, PeerTimedOut
from party_node.serving.hooks import FeatureRows, FeatureSource
from party_node.serving.models import HostModel

#: Slack for a peer's reply after its own gRPC deadline (it fails by itself at the deadline).
_REPLY_GRACE_S = 0.05


class ProjectionSource(Protocol):
    """One collaborator, as the host's prediction sees it."""

    node_id: str
    feature_key: str

    def describe(self) -> str: ...

    def read(self, ids: Sequence[str], deadline: float, batch_id: str = "") -> FeatureRows: ...


@dataclass
class Predictions:
    """The answer for one batch of distinct ids."""

    ids: list[str]
    #: Per id: its row in `scores`, or -1 when some party does not hold it.
    rows: list[int]
    #: (ids held by every party, output width) float32.
    scores: torch.Tensor
    #: Per party that lacks some ids: its per-id "not held" flags.
    missing: dict[str, list[bool]]

    def missing_at(self, i: int) -> list[str]:
        return [node for node, flags in self.missing.items() if flags[i]]


class HostPrediction:
    """Runs batches for the batcher and for batch prediction."""

    def __init__(
        self,
        scheduler: object,
        node_id: str,
        model: HostModel,
        peers: Sequence[ProjectionSource],
        workers: int = 2,
    ) -> None:
        self.node_id = node_id
        self.model = model
        self.peers = list(peers)
        self.own = FeatureSource(scheduler, model.feature_model, f"host '{node_id}'")
        self.own_key = next(k for k in model.keys if k not in {p.feature_key for p in peers})
        self._pool = ThreadPoolExecutor(
            max(1, workers * len(self.peers)), thread_name_prefix="peer-call"
        )

    def predict(self, ids: Sequence[str], deadline: float, batch_id: str = "") -> Predictions:
        ids = list(ids)
        calls: dict[str, Future] = {
            p.node_id: self._pool.submit(p.read, ids, deadline, batch_id) for p in self.peers
        }
        try:
            parts = {self.node_id: self._own_rows(ids)}
        except BaseException:
            for call in calls.values():
                call.cancel()
            raise
        by_key = {self.own_key: parts[self.node_id]}
        for peer in self.peers:
            rows = self._result(peer, calls[peer.node_id], deadline)
            parts[peer.node_id], by_key[peer.feature_key] = rows, rows
        return self._fuse(ids, parts, by_key)

    def _own_rows(self, ids: list[str]) -> FeatureRows:
        rows = self.own.read(ids)
        if self.model.projection is not None:  # secure: the host's own projection, in plain
            with torch.no_grad():
                rows.features = self.model.projection(rows.features.to(torch.float32))
        return rows

    def _result(self, peer: ProjectionSource, call: Future, deadline: float) -> FeatureRows:
        try:
            return call.result(timeout=max(0.0, deadline - time.monotonic()) + _REPLY_GRACE_S)
        except FutureTimeout:
            call.cancel()
            raise PeerTimedOut(f"{peer.describe()} did not answer within the deadline") from None

    def _fuse(
        self, ids: list[str], parts: dict[str, FeatureRows], by_key: dict[str, FeatureRows]
    ) -> Predictions:
        n = len(ids)
        found = {node: torch.tensor(r.found, dtype=torch.bool) for node, r in parts.items()}
        complete = torch.ones(n, dtype=torch.bool)
        for flags in found.values():
            complete &= flags
        inputs = []
        for key in self.model.keys:
            rows = by_key[key]
            flags = torch.tensor(rows.found, dtype=torch.bool)
            position = torch.cumsum(flags.to(torch.int64), 0) - 1
            width = self.model.widths[key]
            features = _matrix(rows.features, width)
            if features.shape[1] != width:
                owner = "this host" if key == self.own_key else f"party '{key}'"
                raise HookFailed(
                    f"{owner} returned {features.shape[1]} columns for feature key '{key}'; the "
                    f"model was trained on {width}"
                )
            inputs.append(features.index_select(0, position[complete]))
        if int(complete.sum()) > 0:
            with torch.no_grad():
                scores = self.model.predictor(*inputs)
            scores = scores.reshape(int(complete.sum()), -1).to(torch.float32)
        else:
            scores = torch.empty(0, self.model.output_width)
        row_of = torch.full((n,), -1, dtype=torch.int64)
        row_of[complete] = torch.arange(int(complete.sum()))
        missing = {
            node: (~flags).tolist() for node, flags in found.items() if not bool(flags.all())
        }
        return Predictions(ids, row_of.tolist(), scores, missing)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _matrix(features: torch.Tensor, width: int) -> torch.Tensor:
    """Rows as (rows, columns) float32; no rows at all has the model's width."""
    if features.shape[0] == 0:
        return torch.empty(0, width)
    return features.reshape(features.shape[0], -1).to(torch.float32)
