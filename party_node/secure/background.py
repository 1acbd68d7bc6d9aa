"""Data-independent HE work done ahead, on one worker thread per layer side, while the party
waits for its peer: the noise that finishes every result (a public-key encryption of zero with
the Gaussian flood added), and whatever a party knows before the next batch (its next share,
encoded and encrypted). TenSEAL's SEAL calls hold the GIL, so work running here takes turns
with the party's main thread rather than using the other core: the layers submit it
(`NoisePool.refill`, their next share) just before they wait for their peer. Results are taken
in submission order; `NoisePool.take` computes inline when the pool ran dry, so nothing ever
waits on an empty queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from party_node.secure.context import PeerKeys
from party_node.secure.shares import secure_normal

T = TypeVar("T")


class Background:
    """One worker thread; `submit` returns a Future."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="he-prepare")

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def noise_ciphertext(peer: PeerKeys, parms_id: Any, scale: float, noise_std: float) -> Any:
    """Enc_peer(0) with a complex Gaussian flood of `noise_std` in every slot, at `scale`."""
    zero = peer.encrypt_zero(parms_id)
    zero.scale = scale  # an encryption of zero is one at any scale
    if noise_std > 0:  # (0: the flood comes with another plaintext of the result)
        n = peer.params.slots
        flood = secure_normal(n, noise_std) + 1j * secure_normal(n, noise_std)
        peer.engine.evaluator.add_plain_inplace(zero, peer.engine.encode(flood, scale, parms_id))
    return zero


class NoisePool:
    """Pre-made finishing noise for one kind of result (peer key, level, scale, width)."""

    def __init__(
        self,
        background: Background,
        peer: PeerKeys,
        scale: float,
        noise_std: float,
        keep: int = 2,
    ) -> None:
        self.background, self.peer = background, peer
        self.parms_id = peer.engine.seal_context.first_parms_id()
        self.scale, self.noise_std, self.keep = scale, noise_std, keep
        self._ready: deque[Future[Any]] = deque()
        self.refill()

    def _make(self) -> Any:
        return noise_ciphertext(self.peer, self.parms_id, self.scale, self.noise_std)

    def refill(self) -> None:
        while len(self._ready) < self.keep:
            self._ready.append(self.background.submit(self._make))

    def take(self) -> Any:
        """One noise ciphertext (made inline if none is ready; `refill` makes more)."""
        return self._ready.popleft().result() if self._ready else self._make()


def flood_std_per_group(noise: float, groups: int) -> float:
    """Per-slot flood so that the owner's sum over `groups` slots has std `noise`."""
    return noise / float(np.sqrt(groups))
