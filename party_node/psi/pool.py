"""A worker pool for PSI's group work, sized to the cores.

libsodium calls go through ctypes (rbcl's own loader), which releases the GIL, so a thread
pool scales across cores with no start-up cost and no copying; a process pool is available
for hosts whose Python threads are busy with other work.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from multiprocessing import get_context
from typing import Any, Literal, TypeVar

#: About 1 MB of points per wire chunk.
CHUNK_POINTS = 1 << 15
#: Points per unit of pool work (~0.4 s of one core): small enough to spread one chunk
#: over every worker, large enough that dispatch costs nothing.
UNIT_POINTS = 1 << 12

T = TypeVar("T")
R = TypeVar("R")


class _PriorityThreads:
    """Worker threads that take urgent work (answering the peer's stream) before background
    work (blinding this party's own ids), so a party keeps pace with its peer."""

    _STOP = -1

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"psi-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, fn: Callable[..., R], args: tuple[Any, ...]) -> Future[R]:
        future: Future[R] = Future()
        self._queue.put((priority, next(self._order), (future, fn, args)))
        return future

    def _work(self) -> None:
        while True:
            priority, _, (future, fn, args) = self._queue.get()
            if priority == self._STOP:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel queued work, let running work finish, stop the threads."""
        while True:
            try:
                _, _, (future, _, _) = self._queue.get_nowait()
            except queue.Empty:
                break
            future.cancel()
        for _ in self._threads:
            self._queue.put((self._STOP, next(self._order), (None, None, None)))
        for thread in self._threads:
            thread.join()


class PsiPool:
    """Workers for hashing and blinding, sized to the cores; use as a context manager.

    `workers=0` runs everything in the calling thread (tiny sets, debugging)."""

    def __init__(
        self,
        workers: int | None = None,
        kind: Literal["threads", "processes"] = "threads",
    ) -> None:
        if workers is None:
            workers = (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1)
            )
        if workers < 0:
            raise ValueError(f"PsiPool workers must be >= 0, got {workers}")
        self.workers = workers
        self.kind = kind
        self._executor: futures.Executor | None = None
        self._threads: _PriorityThreads | None = None
        if workers == 0:
            pass
        elif kind == "threads":
            self._threads = _PriorityThreads(workers)
        elif kind == "processes":
            # spawn, not fork: forking a process that runs gRPC threads is unsafe.
            self._executor = futures.ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        else:
            raise ValueError(f"PsiPool kind must be 'threads' or 'processes', got {kind!r}")
        self._closed = False

    @property
    def window(self) -> int:
        """How many chunks may be in flight ahead of the one being collected."""
        return max(2, self.workers)

    def submit(self, fn: Callable[..., R], *args: object, background: bool = False) -> Future[R]:
        """Queue fn(*args); `background` work waits while urgent work is queued (threads)."""
        if self._closed:
            raise RuntimeError("PsiPool is closed")
        if self._threads is not None:
            return self._threads.submit(1 if background else 0, fn, args)
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        done: Future[R] = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)
        return done

    def map_chunks(
        self,
        fn: Callable[[bytes, Sequence[T]], bytes],
        key: bytes,
        chunks: Iterable[Sequence[T]],
        step: int,
    ) -> Iterator[bytes]:
        """fn(key, part) over parts of `step` elements of each chunk, all workers at once;
        yields each chunk's joined result in order, with a few chunks in flight at most."""
        pending: deque[list[Future[bytes]]] = deque()
        try:
            for chunk in chunks:
                pending.append(
                    [self.submit(fn, key, chunk[i : i + step]) for i in range(0, len(chunk), step)]
                )
                while pending and (len(pending) > self.window or all(f.done() for f in pending[0])):
                    yield b"".join(f.result() for f in pending.popleft())
            while pending:
                yield b"".join(f.result() for f in pending.popleft())
        finally:
            for parts in pending:
                for future in parts:
                    future.cancel()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._threads is not None:
                self._threads.shutdown()
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PsiPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
