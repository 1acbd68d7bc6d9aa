"""Bounds every piece of local work by `calculation_timeout`: user code that hangs or is too
slow fails the task with a message instead of leaving every party waiting."""

from __future__ import annotations

import _thread
import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Watchdog:
    def __init__(self, timeout: float, on_timeout: Callable[[str], None]):
        self.timeout = timeout
        self._on_timeout = on_timeout
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None
        self._fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def local(self, what: str) -> Iterator[None]:
        """Mark `what` (e.g. "train_a_batch in TRAIN round 2") as running in this thread."""
        with self._lock:
            previous = self._current
            self._current = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._current = previous

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                current = self._current
            if current is None or self._fired:
                continue
            what, started = current
            if time.monotonic() - started > self.timeout:
                self._fired = True
                self._on_timeout(
                    f"{what} took longer than calculation_timeout={self.timeout:g} s; "
                    "make the local work faster or raise calculation_timeout"
                )
                _thread.interrupt_main()

    def close(self) -> None:
        self._stop.set()
