"""The engine's files at one party: the input (`key,row` CSV lines, one per id) and the
output rows it names. Each id reaches the worker (a process of this party) as "x" and the hex
of its UTF-8 bytes: injective, so the match is exact, and CSV-safe whatever the id."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from party_node.psi.frames import PsiError

DOMAIN_TAG = b"heteronn/v2/psi/id-key/SHA-256/"


def id_key(item: str) -> str:
    """An id's 128-bit result key: the host names the final ids to a collaborator by these
    (hex of SHA-256 with a domain tag; a false match would need a SHA-256 collision)."""
    digest = hashlib.sha256(DOMAIN_TAG + item.encode("utf-8", "surrogatepass")).digest()
    return digest[:16].hex()


def _chunks(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in ids:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_input(ids: Sequence[str], path: Path) -> int:
    """Write `key,row` for every id to `path`, streaming: the key is "x" and the hex of the
    id's UTF-8 bytes (injective, so the engine's matching is exact, and CSV-safe whatever
    the id). A repeated id keeps only its first row, found by sorting 64-bit hashes, so no
    set of the ids is ever built. Returns the row count (row numbers index `ids`)."""
    hashes = array("q")
    count = 0
    with open(path, "w", encoding="ascii", newline="\n", buffering=1 << 20) as out:
        out.write("k,row\n")
        for chunk in _chunks(ids, 1 << 16):
            try:
                keys = [item.encode("utf-8", "surrogatepass").hex() for item in chunk]
            except AttributeError:
                bad = next(i for i, item in enumerate(chunk) if not isinstance(item, str))
                raise TypeError(
                    f"ids[{count + bad}] is {type(chunk[bad]).__name__}, not str: "
                    "PSI ids must be strings"
                ) from None
            out.write("".join([f"x{key},{row}\n" for row, key in enumerate(keys, count)]))
            hashes.extend(map(hash, chunk))
            count += len(chunk)
    repeated = _repeated_rows(np.frombuffer(hashes, dtype=np.int64), ids)
    if repeated:
        _drop_rows(path, repeated)
    return count


def _repeated_rows(hashes: np.ndarray, ids: Sequence[str]) -> set[int]:
    """Rows whose id an earlier row already has: equal hashes are candidates, equal ids
    decide."""
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in row order
    ordered = hashes[order]
    starts = np.flatnonzero(ordered[1:] == ordered[:-1])
    repeated: set[int] = set()
    seen_groups: set[int] = set()
    for start in starts.tolist():
        value = int(ordered[start])
        if value in seen_groups:
            continue
        seen_groups.add(value)
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == value:
            end += 1
        first: dict[str, int] = {}
        for row in order[start : end + 1].tolist():
            if ids[row] in first:
                repeated.add(row)
            else:
                first[ids[row]] = row
    return repeated


def _drop_rows(path: Path, drop: set[int]) -> None:
    kept = path.with_suffix(".dedup")
    with open(path, encoding="ascii") as src, open(kept, "w", encoding="ascii") as out:
        out.write(src.readline())
        for row, line in enumerate(src):
            if row not in drop:
                out.write(line)
    kept.replace(path)


def read_rows(path: Path, limit: int) -> np.ndarray:
    """Row numbers from the engine's output CSV (`key,row` lines after a header), checked
    against `limit`; int64, sorted, distinct."""
    parts: list[np.ndarray] = []
    with open(path, "rb") as handle:
        handle.readline()  # header
        while True:
            lines = handle.readlines(1 << 22)
            if not lines:
                break
            parts.append(np.array([int(line[line.rindex(b",") + 1 :]) for line in lines]))
    rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    if rows.size and (rows[0] < 0 or rows[-1] >= limit):
        raise PsiError(f"the PSI engine returned row {int(rows[-1])} of {limit} input rows")
    return rows


@dataclass(frozen=True)
class EngineInput:
    """A party's ids as the engine reads them: `key,row` CSV lines, written once per PSI
    (shared by the runs with every collaborator) and kept for a resumed run."""

    path: Path
    count: int

    @classmethod
    def write(cls, folder: Path, ids: Iterable[str], recover: bool = False) -> EngineInput:
        """Write the input; a recovered PSI reuses what the interrupted one wrote (the
        task's ids must not change between attempts; the split digest catches it if they do)."""
        folder.mkdir(parents=True, exist_ok=True)
        path, marker = folder / "input.csv", folder / "input.count"
        if recover and marker.exists() and path.exists():
            return cls(path, int(marker.read_text()))
        marker.unlink(missing_ok=True)
        count = write_input(ids, path)
        marker.write_text(str(count))
        return cls(path, count)
