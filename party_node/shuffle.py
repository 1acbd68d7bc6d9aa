"""The aligned per-round shuffle the seed hand-writes (wrongly: ``md5(bytes(x + round))``
fails on str + int). Every party computes the same order from the ids and the round alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def aligned_order(ids: Iterable[str | int], round_no: int, salt: str = "") -> list:
    """Ids sorted by SHA-256(salt, round, id): a fresh pseudo-random order each round that is
    identical at every party holding the same ids. Ties are impossible for distinct ids."""

    def key(item: str | int) -> bytes:
        return hashlib.sha256(f"{salt}\x00{round_no}\x00{item}".encode()).digest()

    return sorted(ids, key=key)
