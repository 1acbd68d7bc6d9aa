"""The id sets every PSI benchmark uses: N ids per party, half of them shared.

Sets are lazy sequences: an id is made when it is read, so a 10M-id party holds none of them
in memory beyond what the PSI itself keeps (that is what `peak_rss_mb` measures). No
dependencies beyond the standard library, so the spu peer (in its own venv) uses them too."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload


class IdRange(Sequence[str]):
    """customer-<i> for i in [start, start + n), made on demand."""

    def __init__(self, start: int, n: int) -> None:
        self.start, self.n = start, n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(index)
        return f"customer-{self.start + index % self.n:010d}"

    def __iter__(self) -> Iterator[str]:
        return (f"customer-{i:010d}" for i in range(self.start, self.start + self.n))


def host_ids(n: int) -> IdRange:
    return IdRange(0, n)


def collaborator_ids(n: int) -> IdRange:
    return IdRange(n // 2, n)


def intersection_size(n: int) -> int:
    return n - n // 2


def write_csv(path: Path, ids: Sequence[str]) -> None:
    """One `id` column, the way a SecretFlow user hands spu its ids."""
    with open(path, "w", encoding="ascii", buffering=1 << 20) as out:
        out.write("id\n")
        batch: list[str] = []
        for item in ids:
            batch.append(item)
            if len(batch) >= 65536:
                out.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            out.write("\n".join(batch) + "\n")
