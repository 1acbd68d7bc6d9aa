"""What a serving node decides about a call, with no gRPC in sight (the servicers translate):
the host's Predict (ids within bounds, a deadline, a place in the batcher) and a
collaborator's answers to its host (the right caller, the right model, ids within bounds and
within the rate cap or the batch's intersection). Limits come from one `ServingLimits`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass

from party_node.errors import (
    BadMessage,
    DeadlineExpired,
    ModelMismatch,
    NotAllowed,
    Overloaded,
    RateLimited,
)
from party_node.serving.batching import DynamicBatcher
from party_node.serving.bundle import Bundle, short
from party_node.serving.limits import CallGate, RateLimiter, ServingLimits, check_ids
from party_node.serving.predict import Predictions

#: Batch ids name a batch prediction in PSI headers and Embed calls: like task ids.
BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def margin(budget: float) -> float:
    """How early a node answers before a deadline so its own message, not the caller's
    generic DEADLINE_EXCEEDED, arrives: a tenth of the time left, at most 25 ms."""
    return min(0.025, 0.1 * max(0.0, budget))


@contextmanager
def admitted(gate: CallGate, where: str) -> Iterator[None]:
    """One call in flight, or Overloaded when `gate` is full."""
    if not gate.enter():
        raise Overloaded(
            f"{where} is answering {gate.limit} calls already (limit max_calls_in_flight); "
            "retry later"
        )
    try:
        yield
    finally:
        gate.leave()


class PredictHandler:
    """The host's Predict: check, queue into the batcher, wait until the deadline."""

    def __init__(self, limits: ServingLimits, batcher: DynamicBatcher, node_id: str) -> None:
        self.limits = limits
        self.batcher = batcher
        self.gate = CallGate(limits.max_calls_in_flight)
        self.where = f"host '{node_id}'"

    def check(self, ids: Sequence[str]) -> list[str]:
        lim = self.limits
        return check_ids(ids, lim.max_ids_per_call, lim.max_id_bytes, "Predict")

    def deadline(self, time_remaining: float | None) -> float:
        """The call's deadline (time.monotonic()): the caller's, capped by predict_timeout_s."""
        budget = self.limits.predict_timeout_s
        if time_remaining is not None:
            budget = min(budget, time_remaining)
        return time.monotonic() + budget

    def predict(self, ids: list[str], deadline: float) -> Predictions:
        """Answer by `deadline` minus a margin; the parties are asked to finish a margin
        earlier still, so a slow one is named in the error."""
        m = margin(deadline - time.monotonic())
        future: Future = self.batcher.submit(ids, deadline - 2 * m)
        wait = deadline - m - time.monotonic()
        try:
            return future.result(timeout=max(0.0, wait))
        except FutureTimeout:
            future.cancel()
            raise DeadlineExpired(
                f"{self.where} had no prediction within the call's deadline "
                f"({max(0.0, wait) * 1000:.0f} ms left when queued); raise the deadline or "
                "lower the load"
            ) from None


@dataclass(frozen=True)
class PeerCall:
    """A call from the host to this collaborator, as the handler needs it."""

    rpc: str
    sender: str
    model_id: str
    ids: Sequence[str]
    batch_id: str
    #: Names in the caller's verified certificate (empty without mutual TLS).
    identities: frozenset[str]


class PeerCallHandler:
    """A collaborator's checks of its host's calls. `intersection(batch_id)` gives a batch
    prediction's PSI result (the ids the host may ask about in that batch)."""

    def __init__(
        self,
        bundle: Bundle,
        limits: ServingLimits,
        intersection: Callable[[str], frozenset[str]],
        refused: Callable[[PeerCall, str], None] = lambda call, reason: None,
    ) -> None:
        self.bundle = bundle
        self.host = bundle.host
        self.limits = limits
        self.intersection = intersection
        self.refused = refused
        self.gate = CallGate(limits.max_calls_in_flight)
        self.rate = RateLimiter(
            limits.max_ids_per_s, max(limits.max_embed_ids, limits.max_ids_per_s)
        )
        self.where = f"collaborator '{bundle.node_id}'"

    def check_caller(self, sender: str, identities: frozenset[str], rpc: str) -> None:
        """Only the model's host, and (under mutual TLS) the one its certificate names."""
        if sender != self.host:
            raise NotAllowed(
                f"{rpc}: {self.where} answers only the host of its model ('{self.host}'), "
                f"not '{sender}'"
            )
        if identities and sender not in identities:
            raise NotAllowed(
                f"{rpc}: the caller's certificate names {sorted(identities)}, but the request "
                f"claims to come from '{sender}'"
            )

    def check_model(self, model_id: str) -> None:
        if model_id != self.bundle.model_id:
            raise ModelMismatch(
                f"{self.where} serves model {short(self.bundle.model_id)}, not "
                f"{short(model_id) or 'none'}; both parties must serve bundles of one task run"
            )

    def check_batch_id(self, batch_id: str) -> str:
        if not BATCH_ID.match(batch_id):
            raise BadMessage("a batch id is 1-128 characters of [A-Za-z0-9._-]")
        return batch_id

    def admit(self, call: PeerCall) -> list[str]:
        """Everything about `call` before this party reads a row: caller, model, ids, and
        the rate cap (online) or the batch's intersection (batch prediction)."""
        self.check_caller(call.sender, call.identities, call.rpc)
        self.check_model(call.model_id)
        lim = self.limits
        limit = lim.max_batch_embed_ids if call.batch_id else lim.max_embed_ids
        ids = check_ids(call.ids, limit, lim.max_id_bytes, call.rpc)
        if call.batch_id:
            allowed = self.intersection(self.check_batch_id(call.batch_id))
            if any(i not in allowed for i in ids):
                self.refused(call, "outside_intersection")
                raise NotAllowed(
                    f"{call.rpc}: batch '{call.batch_id}' asks for ids outside its PSI "
                    "intersection; a batch prediction may only ask for ids both parties hold"
                )
        elif not self.rate.take(len(ids)):
            self.refused(call, "rate_limited")
            raise RateLimited(
                f"{self.where} answers at most {lim.max_ids_per_s:g} ids per second online "
                "(its max_ids_per_s); slow down or ask its operator to raise the cap"
            )
        return ids
