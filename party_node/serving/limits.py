"""Every bound a serving node puts on its callers (the settings fill it; the transport's
handlers enforce it; the defaults live with every other network bound in wire.limits). Each
request is hostile until these checks pass."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from party_node.errors import BadMessage
from wire import limits


@dataclass(frozen=True)
class ServingLimits:
    #: Ids in one Predict call.
    max_ids_per_call: int = limits.SERVING_MAX_IDS_PER_CALL
    #: UTF-8 bytes of one id.
    max_id_bytes: int = limits.SERVING_MAX_ID_BYTES
    #: Calls being answered at once (Predict at the host; Embed/SecureEmbed at a
    #: collaborator); more are refused with RESOURCE_EXHAUSTED rather than queued.
    max_calls_in_flight: int = limits.SERVING_MAX_CALLS_IN_FLIGHT
    #: Ids waiting in the host's batcher.
    max_queued_ids: int = limits.SERVING_MAX_QUEUED_IDS
    #: Ids in one online Embed/SecureEmbed call (the host's max_batch must fit).
    max_embed_ids: int = limits.SERVING_MAX_EMBED_IDS
    #: Ids in one Embed call of a batch prediction.
    max_batch_embed_ids: int = limits.SERVING_MAX_BATCH_EMBED_IDS
    #: A collaborator's cap on ids per second answered online (0: no cap); bursts up to
    #: max(max_embed_ids, one second's worth).
    max_ids_per_s: float = limits.SERVING_MAX_IDS_PER_S
    #: Batch predictions (their PSI sessions) open at once at a collaborator.
    max_open_batches: int = limits.SERVING_MAX_OPEN_BATCHES
    #: Seconds a batch prediction may sit idle before a collaborator forgets it.
    batch_idle_s: float = limits.SERVING_BATCH_IDLE_S
    #: Secure sessions (a host's keys and Enc_H(U)) open at once at a collaborator, and how
    #: long one may sit idle before it is forgotten.
    max_secure_sessions: int = limits.SERVING_MAX_SECURE_SESSIONS
    session_idle_s: float = limits.SERVING_SESSION_IDLE_S
    #: Deadline of a Predict call when the caller sets none, and the most it may set.
    predict_timeout_s: float = limits.SERVING_PREDICT_TIMEOUT_S


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
