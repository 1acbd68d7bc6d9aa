"""ECDH private set intersection on ristretto255: the host's and a collaborator's side.

Pure protocol code (no transport). The steps, as in proto/heteronn/v1/party_node.proto:

1. H -> C  blinded:         P(x)^a for the host's ids, chunked.
2. C -> H  double_blinded:  P(x)^ab in the order received, chunk by chunk as they arrive.
3. C -> H  peer_blinded:    P(y)^b for the collaborator's ids, in a random order.
4. H computes P(y)^ba, matches it against P(x)^ab, and after intersecting over every
   collaborator sends H -> C result_indices: step-3 positions of the final intersection.

Each side learns the other's set size and the final intersection, nothing else (semi-honest
parties; P is a random-oracle hash to the group and DDH is hard in ristretto255).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures

import numpy as np

from party_node.psi.frames import (
    BLINDED,
    CHUNK_INDICES,
    DOUBLE_BLINDED,
    INDEX_BYTES,
    MAX_IDS,
    PEER_BLINDED,
    RESULT_INDICES,
    STEPS,
    PsiError,
    PsiFrame,
    StepReader,
    decode_indices,
    encode_indices,
    frames_of,
    split_points,
)
from party_node.psi.group import POINT_BYTES, blind, hash_and_blind, new_key
from party_node.psi.pool import CHUNK_POINTS, UNIT_POINTS, PsiPool

__all__ = [
    "BLINDED",
    "DOUBLE_BLINDED",
    "PEER_BLINDED",
    "RESULT_INDICES",
    "STEPS",
    "CollaboratorPsi",
    "HostBlinding",
    "HostPsi",
    "PsiError",
    "PsiFrame",
    "PsiPool",
    "decode_indices",
    "encode_indices",
    "intersect_all",
    "prepare_ids",
]


def prepare_ids(ids: Iterable[str]) -> list[str]:
    """Distinct ids in first-seen order; TypeError names the first id that is not a str."""
    if isinstance(ids, str | bytes):
        raise TypeError("ids must be a sequence of str, not a single string")
    items = list(ids)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"ids[{index}] is {type(item).__name__}, not str: "
                "PSI ids must be strings"
            )
    unique = list(dict.fromkeys(items))
    if len(unique) > MAX_IDS:
        raise PsiError(f"{len(unique)} distinct ids exceed the PSI limit of {MAX_IDS}")
    return unique


def _slices(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def random_order(n: int) -> np.ndarray:
    """A uniformly random order of range(n) from the OS CSPRNG (sort by 128-bit keys)."""
    if n < 2:
        return np.arange(n)
    keys = np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(n, 2)
    return np.lexsort((keys[:, 1], keys[:, 0]))


def _random_permutation(n: int) -> list[int]:
    return random_order(n).tolist()


class OwnBlinding:
    """P(id)^key for one party's distinct ids, computed once by the pool from construction
    on, in work units; read back as wire chunks any number of times (a retried call, or the
    host's exchanges with several collaborators)."""

    def __init__(self, ids: Sequence[str], pool: PsiPool, key: bytes | None = None) -> None:
        self.ids = ids
        self.key = key if key is not None else new_key()
        self._units: list[futures.Future[bytes]] = [
            pool.submit(hash_and_blind, self.key, part, background=True)
            for part in _slices(ids, UNIT_POINTS)
        ]

    def chunks(self, chunk_points: int) -> Iterator[bytes]:
        """The blinded points regrouped into chunks of `chunk_points`, in id order."""
        cut = chunk_points * POINT_BYTES
        buffer: list[bytes] = []
        size = 0
        for unit in self._units:
            data = unit.result()
            buffer.append(data)
            size += len(data)
            while size >= cut:
                joined = b"".join(buffer)
                yield joined[:cut]
                buffer, size = [joined[cut:]], size - cut
        if size:
            yield b"".join(buffer)

    def cancel(self) -> None:
        for unit in self._units:
            unit.cancel()


class HostBlinding(OwnBlinding):
    """The host's blinded set, shared by its exchanges with every collaborator: each of them
    sees the same P(x)^a, which tells a collaborator nothing that its own copy would not."""

    def __init__(self, ids: Iterable[str], pool: PsiPool) -> None:
        super().__init__(prepare_ids(ids), pool)


class HostPsi:
    """The host's side of one exchange with one collaborator.

    `blinded_frames()` and `consume()` may run at the same time in different threads
    (gRPC pulls the request stream from its own thread)."""

    def __init__(
        self,
        ids: Iterable[str] | HostBlinding,
        pool: PsiPool,
        peer: str = "collaborator",
        chunk_points: int = CHUNK_POINTS,
    ) -> None:
        self._blinding = ids if isinstance(ids, HostBlinding) else HostBlinding(ids, pool)
        self._ids = self._blinding.ids
        self._key = self._blinding.key
        self._pool = pool
        self.peer = peer
        self._chunk = chunk_points
        self._matches: dict[str, int] | None = None
        self.peer_size: int | None = None

    @property
    def size(self) -> int:
        return len(self._ids)

    def blinded_frames(self) -> Iterator[PsiFrame]:
        """Step 1: P(x)^a for the host's ids, chunk by chunk (may be called again to retry)."""
        yield from frames_of(BLINDED, self._blinding.chunks(self._chunk), len(self._ids))

    def consume(self, frames: Iterable[PsiFrame]) -> None:
        """Steps 2-4: read P(x)^ab, then P(y)^b (blinding it to P(y)^ba as it arrives)
        and match. Raises PsiError when the collaborator breaks the protocol."""
        if self._matches is not None:
            raise RuntimeError("HostPsi.consume may run only once per exchange")
        stream = iter(frames)
        double = StepReader(stream, DOUBLE_BLINDED, self.peer, expected_total=len(self._ids))
        table: dict[bytes, str] = {}
        ids = iter(self._ids)
        for data in double:
            table.update(zip(split_points(data), ids, strict=False))
        peer = StepReader(stream, PEER_BLINDED, self.peer)
        matches: dict[str, int] = {}
        position = 0
        try:
            for data in self._pool.map_chunks(blind, self._key, peer, UNIT_POINTS * POINT_BYTES):
                for point in split_points(data):
                    found = table.get(point)
                    if found is not None:
                        matches.setdefault(found, position)
                    position += 1
        except ValueError as exc:
            if isinstance(exc, PsiError):
                raise
            raise PsiError(f"{self.peer} sent an invalid peer_blinded chunk: {exc}") from None
        self.peer_size = peer.count
        self._matches = matches

    def matched_ids(self) -> set[str]:
        """The host's ids that this collaborator also holds (pairwise result)."""
        if self._matches is None:
            raise RuntimeError("HostPsi.matched_ids needs consume() to have finished")
        return set(self._matches)

    def result_frames(self, final: set[str]) -> Iterator[PsiFrame]:
        """Step 4: the step-3 positions of the collaborator's ids that are in `final`."""
        if self._matches is None:
            raise RuntimeError("HostPsi.result_frames needs consume() to have finished")
        missing = final.difference(self._matches)
        if missing:
            raise ValueError(
                f"the final intersection holds {len(missing)} ids that {self.peer} does not "
                "hold; it must be a subset of every pairwise intersection"
            )
        indices = sorted(self._matches[item] for item in final)
        chunks = (
            encode_indices(indices[start : start + CHUNK_INDICES])
            for start in range(0, len(indices), CHUNK_INDICES)
        )
        yield from frames_of(RESULT_INDICES, chunks, len(indices))


class CollaboratorPsi:
    """A collaborator's side of the exchange with the host.

    Blinding of its own ids starts at construction, so it overlaps with the host's work."""

    def __init__(
        self,
        ids: Iterable[str],
        pool: PsiPool,
        peer: str = "host",
        chunk_points: int = CHUNK_POINTS,
    ) -> None:
        unique = prepare_ids(ids)
        self._shuffled = [unique[i] for i in _random_permutation(len(unique))]
        self._pool = pool
        self.peer = peer
        self._chunk = chunk_points
        self._own = OwnBlinding(self._shuffled, pool)
        self._key = self._own.key
        self.peer_size: int | None = None
        self.result: set[str] | None = None

    @property
    def size(self) -> int:
        return len(self._shuffled)

    def respond(self, frames: Iterable[PsiFrame]) -> Iterator[PsiFrame]:
        """Steps 2 and 3: P(x)^ab for each blinded chunk as it arrives, then P(y)^b."""
        blinded = StepReader(iter(frames), BLINDED, self.peer)
        announced = False
        try:
            for data in self._pool.map_chunks(blind, self._key, blinded, UNIT_POINTS * POINT_BYTES):
                yield PsiFrame(DOUBLE_BLINDED, data, 0 if announced else (blinded.total or 0))
                announced = True
        except ValueError as exc:
            if isinstance(exc, PsiError):
                raise
            raise PsiError(f"{self.peer} sent an invalid blinded chunk: {exc}") from None
        self.peer_size = blinded.count
        yield PsiFrame(DOUBLE_BLINDED, b"", 0 if announced else blinded.count, True)
        yield from frames_of(PEER_BLINDED, self._own.chunks(self._chunk), len(self._shuffled))

    def accept_result(self, frames: Iterable[PsiFrame]) -> set[str]:
        """Map the host's result indices back to this party's ids."""
        reader = StepReader(iter(frames), RESULT_INDICES, self.peer, element_bytes=INDEX_BYTES)
        seen: set[int] = set()
        for data in reader:
            for index in decode_indices(data):
                if index >= len(self._shuffled):
                    raise PsiError(
                        f"{self.peer} sent result index {index}, but this party sent only "
                        f"{len(self._shuffled)} elements"
                    )
                if index in seen:
                    raise PsiError(f"{self.peer} sent result index {index} twice")
                seen.add(index)
        self.result = {self._shuffled[index] for index in seen}
        return self.result

    def close(self) -> None:
        """Stop blinding work that nobody will collect (the task ended early)."""
        self._own.cancel()


def intersect_all(hosts: Sequence[HostPsi]) -> set[str]:
    """The final intersection: ids every collaborator shares with the host."""
    if not hosts:
        raise ValueError("intersect_all needs at least one finished exchange")
    final = hosts[0].matched_ids()
    for host in hosts[1:]:
        final &= host.matched_ids()
    return final
