"""Bounds every piece of local work by `calculation_timeout`: user code that hangs or is too
slow fails the task with a message instead of leaving every party waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

#: How long interrupted local work may take to unwind before the process is ended.
GRACE_S = 10.0


class Watchdog:
    """Created by the thread that runs the task. Only when that is the process's main thread
    (the node owns the process: `heteronn node`, the seed's `_run`) does a timeout interrupt
    it and, if it stays stuck, end the process; in a thread of someone else's process
    (`simulate.run_local`, a notebook) it only fails the task."""

    def __init__(self, timeout: float, on_timeout: Callable[[str], str]):
        self.timeout = timeout
        self._on_timeout = on_timeout
        self.owns_process = threading.current_thread() is threading.main_thread()
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None
        self._fired = False
        #: The local step whose exception ended the task, for the error message.
        self.failed_in = ""
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
        except Exception:
            self.failed_in = self.failed_in or what
            raise
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
                reason = self._on_timeout(
                    f"{what} took longer than calculation_timeout={self.timeout:g} s; "
                    "make the local work faster or raise calculation_timeout"
                )
                self._interrupt(current, reason)

    def _interrupt(self, stuck: tuple[str, float], reason: str) -> None:
        """Interrupt the main thread (a real SIGINT wakes a blocking call); if the work is
        still stuck after a grace period (a long native call), end the process. Only when
        the task runs in the main thread: never someone else's process."""
        if not self.owns_process or threading.current_thread() is threading.main_thread():
            return
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        if self._stop.wait(GRACE_S):
            return
        with self._lock:
            still = self._current is stuck
        if still:
            print(f"task failed: {reason}", file=sys.stderr, flush=True)
            os._exit(1)

    def close(self) -> None:
        self._stop.set()
