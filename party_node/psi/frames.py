"""PSI steps as frames: the chunk record, and the checks every received step must pass
(right step, announced total, whole elements, a final `last` chunk). No transport."""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from party_node.psi.group import POINT_BYTES

BLINDED = "blinded"
DOUBLE_BLINDED = "double_blinded"
PEER_BLINDED = "peer_blinded"
RESULT_INDICES = "result_indices"
STEPS = (BLINDED, DOUBLE_BLINDED, PEER_BLINDED, RESULT_INDICES)

INDEX_BYTES = 4
#: Indices are uint32 on the wire, so a party may bring at most this many distinct ids.
MAX_IDS = 2**32 - 1
#: About 1 MB of indices per result chunk.
CHUNK_INDICES = 1 << 18


class PsiError(ValueError):
    """The peer broke the PSI protocol, or the exchange cannot go on; the message says how."""


def time_left(timeout: float) -> Callable[[], float]:
    """A countdown over one whole PSI run: each call returns the seconds left, or raises
    PsiError naming the timeout once it has passed (every step's deadline comes from it)."""
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PsiError(f"PSI did not finish within its timeout of {timeout:g} s")
        return left

    return remaining


@dataclass(frozen=True)
class PsiFrame:
    """One chunk of one PSI step, as it crosses the wire."""

    step: str
    data: bytes
    #: Element count of the whole step, announced in its first chunk (0 in the others).
    total: int = 0
    last: bool = False


def frames_of(step: str, chunks: Iterable[bytes], total: int) -> Iterator[PsiFrame]:
    """Wrap data chunks as frames: `total` on the first, `last` on the final one (which
    may be empty when the step has no elements)."""
    previous: bytes | None = None
    announced = False
    for data in chunks:
        if previous is not None:
            yield PsiFrame(step, previous, 0 if announced else total, False)
            announced = True
        previous = data
    yield PsiFrame(step, previous or b"", 0 if announced else total, True)


class StepReader:
    """Reads one step's frames off a shared iterator and checks what the peer claims:
    the step, the announced total, whole elements, and a final `last` frame."""

    def __init__(
        self,
        frames: Iterator[PsiFrame],
        step: str,
        peer: str,
        element_bytes: int = POINT_BYTES,
        expected_total: int | None = None,
        most: int = MAX_IDS,
        why: str = "",
    ) -> None:
        self._frames = frames
        self.step = step
        self.peer = peer
        self.element_bytes = element_bytes
        self.expected_total = expected_total
        #: The largest total this party accepts, and why (said in the error).
        self.most = most
        self.why = why
        self.total: int | None = None
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        what = "group elements" if self.element_bytes == POINT_BYTES else "uint32 indices"
        for frame in self._frames:
            if frame.step != self.step:
                raise PsiError(
                    f"{self.peer} sent a {frame.step!r} chunk where {self.step!r} was expected "
                    "(both parties must run the same PSI protocol version)"
                )
            if self.total is None:
                self.total = self._check_total(frame.total)
            size = len(frame.data)
            if size % self.element_bytes:
                raise PsiError(
                    f"{self.peer} sent {size} bytes in a {self.step} chunk, not a multiple of "
                    f"{self.element_bytes} ({what} are {self.element_bytes} bytes each)"
                )
            self.count += size // self.element_bytes
            if self.count > self.total:
                raise PsiError(
                    f"{self.peer} sent more {self.step} elements ({self.count}) than it "
                    f"announced ({self.total})"
                )
            if size:
                yield frame.data
            if frame.last:
                if self.count != self.total:
                    raise PsiError(
                        f"{self.peer} ended the {self.step} step after {self.count} elements, "
                        f"having announced {self.total}"
                    )
                return
        got = "nothing" if self.total is None else f"{self.count} of {self.total} elements"
        raise PsiError(
            f"{self.peer}'s stream ended before the last {self.step} chunk ({got} received); "
            "the peer stopped or the connection broke"
        )

    def _check_total(self, total: int) -> int:
        if total < 0 or total > MAX_IDS:
            raise PsiError(f"{self.peer} announced {total} {self.step} elements, out of range")
        if total > self.most:
            raise PsiError(
                f"{self.peer} announced {total} {self.step} elements; at most {self.most} "
                f"{self.why}".rstrip()
            )
        if self.expected_total is not None and total != self.expected_total:
            raise PsiError(
                f"{self.peer} announced {total} {self.step} elements; expected "
                f"{self.expected_total}, one for each element sent to it"
            )
        return total


def split_points(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), POINT_BYTES):
        yield data[start : start + POINT_BYTES]


def encode_indices(indices: Sequence[int]) -> bytes:
    packed = array("I", indices) if array("I").itemsize == INDEX_BYTES else array("L", indices)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def decode_indices(data: bytes) -> list[int]:
    packed = array("I") if array("I").itemsize == INDEX_BYTES else array("L")
    packed.frombytes(data)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tolist()
