"""Every bound a serving node puts on its callers, in one place (the settings fill it; the
transport's handlers enforce it). Each request is hostile until these checks pass."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from party_node.errors import BadMessage


@dataclass(frozen=True)
class ServingLimits:
    #: Ids in one Predict call.
    max_ids_per_call: int = 1024
    #: UTF-8 bytes of one id.
    max_id_bytes: int = 256
    #: Calls being answered at once (Predict at the host; Embed/SecureEmbed at a
    #: collaborator); more are refused with RESOURCE_EXHAUSTED rather than queued.
    max_calls_in_flight: int = 256
    #: Ids waiting in the host's batcher.
    max_queued_ids: int = 65_536
    #: Ids in one online Embed/SecureEmbed call (the host's max_batch must fit).
    max_embed_ids: int = 4096
    #: Ids in one Embed call of a batch prediction.
    max_batch_embed_ids: int = 16_384
    #: A collaborator's cap on ids per second answered online (0: no cap); bursts up to
    #: max(max_embed_ids, one second's worth).
    max_ids_per_s: float = 0.0
    #: Batch predictions (their PSI sessions) open at once at a collaborator.
    max_open_batches: int = 4
    #: Seconds a batch prediction may sit idle before a collaborator forgets it.
    batch_idle_s: float = 600.0
    #: Secure sessions (a host's keys and Enc_H(U)) open at once at a collaborator, and how
    #: long one may sit idle before it is forgotten.
    max_secure_sessions: int = 4
    session_idle_s: float = 3600.0
    #: Deadline of a Predict call when the caller sets none, and the most it may set.
    predict_timeout_s: float = 5.0


def check_ids(ids: Sequence[str], max_count: int, max_bytes: int, what: str) -> list[str]:
    """The ids as a list, or BadMessage naming the limit or the first bad id by position
    (never by value: ids are not logged)."""
    if not ids:
        raise BadMessage(f"{what} carries no ids; send at least one")
    if len(ids) > max_count:
        raise BadMessage(
            f"{what} carries {len(ids)} ids; at most {max_count} per call — split the request"
        )
    out = list(ids)
    for i, item in enumerate(out):
        if not item:
            raise BadMessage(f"{what}: ids[{i}] is empty")
        if len(item) > max_bytes or len(item.encode()) > max_bytes:
            raise BadMessage(f"{what}: ids[{i}] is longer than {max_bytes} bytes")
    return out


class RateLimiter:
    """Token bucket over ids: `rate` per second, bursts up to `burst`. rate 0 never limits."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, rate))
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        if self.rate <= 0:
            return True
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if n > self._tokens:
                return False
            self._tokens -= n
            return True


class CallGate:
    """At most `limit` calls at once; `enter` says whether this one may proceed."""

    def __init__(self, limit: int) -> None:
        self._sem = threading.BoundedSemaphore(limit)
        self.limit = limit

    def enter(self) -> bool:
        return self._sem.acquire(blocking=False)

    def leave(self) -> None:
        self._sem.release()
