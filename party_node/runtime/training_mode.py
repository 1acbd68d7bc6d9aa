"""How a task trades exactness for latency (`training_mode=` on every party's scheduler;
docs/performance.md). `exact` (the default) is step-for-step centralized training: the
collaborator waits for batch b's gradient before it computes batch b+1, so every batch pays
one round trip. `pipelined` keeps up to `depth` batches in flight: the collaborator sends
batch b+1.. while b's gradient travels, and applies each gradient when it arrives, computed
on features up to depth-1 updates old (bounded staleness, as SecretFlow's pipelined split
learning). The host's own models stay exact. Every party must declare the same mode; the
coordinator compares `agreement()` at join."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from party_node.errors import ConfigError

#: The agreement map's key; its value is `TrainingMode.agreement()`.
AGREEMENT_KEY = "training_mode"
#: Most batches one collaborator may keep in flight. The host queues that many messages from
#: each collaborator, so the transport's per-sender bounds must allow it.
MAX_DEPTH = 32
#: Depth when `pipelined` is given without one: covers a 50 ms round trip on the MNIST demo
#: (about 8 ms of compute per batch); docs/performance.md has the measurements.
DEFAULT_DEPTH = 8
KINDS = ("exact", "pipelined")
_HELP = "e.g. training_mode = {'kind': 'pipelined', 'depth': 8} (docs/performance.md)"


class TrainingMode(BaseModel):
    """The mode and its parameters; `depth` is how many batches may await their gradient."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["exact", "pipelined"] = "exact"
    depth: int = Field(default=1, ge=1, le=MAX_DEPTH)

    @model_validator(mode="before")
    @classmethod
    def _default_depth(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "pipelined" and "depth" not in data:
            return {**data, "depth": DEFAULT_DEPTH}
        return data

    @model_validator(mode="after")
    def _depth_fits_kind(self) -> TrainingMode:
        if self.kind == "exact" and self.depth != 1:
            raise ValueError(
                "exact mode waits for every gradient (depth 1); use kind 'pipelined' for "
                f"depth {self.depth}"
            )
        if self.kind == "pipelined" and self.depth == 1:
            raise ValueError("pipelined needs depth >= 2 (depth 1 is exact mode)")
        return self

    def agreement(self) -> str:
        """'kind=...;depth=...' (the coordinator names the part that differs)."""
        return f"kind={self.kind};depth={self.depth}"

    @property
    def send_window(self) -> int:
        """Messages per peer the transport may have in flight: a send returns once its call
        has started, not when the peer's acknowledgement is back (ordered delivery by
        `Header.seq`; a failed delivery fails a later send, receive or flush). Exact mode
        too, for what the training thread sends outside a batch's exchange; there a batch's
        gradient goes back on the call that brought its features, which the collaborator
        makes with `wait=True` (roles: collaborator.send_batch, host.EarlyGradients). Twice
        the depth,
        so the host's gradients, acknowledged a round trip after they leave, never hold the
        pipeline back."""
        return 2 * self.depth


def parse_training_mode(value: Any) -> TrainingMode:
    """A mode from None (exact), a kind name ('pipelined', 'pipelined:8' with its depth), a
    dict such as {'kind': 'pipelined', 'depth': 8} or a TrainingMode; a ConfigError naming the
    setting and the fix otherwise."""
    if value is None:
        return TrainingMode()
    if isinstance(value, TrainingMode):
        return value
    if isinstance(value, str):  # 'pipelined' or 'pipelined:8'
        kind, _, depth = value.partition(":")
        if depth and not depth.isdigit():
            raise ConfigError(
                f"training_mode {value!r}: the depth after ':' must be a number; {_HELP}"
            )
        value = {"kind": kind, **({"depth": int(depth)} if depth else {})}
    if not isinstance(value, dict):
        raise ConfigError(
            f"training_mode must be a kind name or a dict, got {type(value).__name__}; {_HELP}"
        )
    if value.get("kind", "exact") not in KINDS:
        raise ConfigError(
            f"training_mode kind {value.get('kind')!r} is unknown; use one of "
            f"{', '.join(KINDS)}; {_HELP}"
        )
    try:
        return TrainingMode(**value)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"training_mode is invalid: {problems}; {_HELP}") from None


def _problem(err: Any) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:
        return message
    got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
    return f"{'.'.join(str(p) for p in err['loc'])}: {message}{got}"


class InFlight:
    """The collaborator's batches whose gradient has not been applied yet, oldest first.
    `push` returns the batches that must be completed (gradient received and applied) before
    the next one may be computed; with depth 1 that is the batch just sent (exact mode)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.batches: deque[tuple[int, torch.Tensor]] = deque()

    def push(self, b: int, features: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        self.batches.append((b, features))
        while len(self.batches) >= self.depth:
            yield self.batches.popleft()

    def drain(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Everything still in flight (end of a round, or a checkpoint)."""
        while self.batches:
            yield self.batches.popleft()

    def keeping_weights(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """Around the user's forward of one batch: with more than one batch in flight, the
        graph keeps a copy of the weights it saw, so its backward still works (and computes
        the gradient at those weights) after the optimizer has stepped the live ones in
        place — PipeDream's and SecretFlow's weight stashing."""
        if self.depth == 1:
            return nullcontext()
        storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.untyped_storage().data_ptr() in storages:
                return tensor.detach().clone()
            return tensor

        return torch.autograd.graph.saved_tensors_hooks(pack, _unpack)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
