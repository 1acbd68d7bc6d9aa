"""The streams this node reads its peers' messages from (the receiving side of Subscribe;
transport.feeds has the sending side and why).

A stream is read on the training thread itself: gRPC's single-threaded unary-stream calls
(a channel option) take each message off the wire on the thread that asks for it, with no
thread of gRPC's or ours in between. A blocked read cannot watch the task's abort signal or
its own timeout, so one watcher thread per node cancels the stream of a read that must end;
the read then raises why."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from heteronn.v1 import common_pb2, party_node_pb2
from party_node.errors import TaskFailed
from party_node.transport.node_state import NodeState

#: How often the watcher looks at the abort signal and the reads' deadlines.
_WATCH_S = 0.1


@dataclass
class _Stream:
    peer: str
    round: int
    call: Any
    #: The peer's `route.stream` notice came: its next messages of the round are here.
    live: bool = False
    #: When the read in progress must give up (monotonic), 0 when none is in progress.
    read_until: float = 0.0
    timed_out: bool = False


class Subscriptions:
    def __init__(self, state: NodeState, max_call_s: float) -> None:
        self.state = state
        self.max_call_s = max_call_s
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

    def open(self, peer: str, round_no: int, stub: Any) -> None:
        """Subscribe to `peer`'s messages of round `round_no` (ending the previous stream
        from it: everything of an earlier round has been taken)."""
        header = common_pb2.Header(
            task_id=self.state.task_id, sender=self.state.node_id, round=round_no
        )
        request = party_node_pb2.SubscribeRequest(header=header)
        call = stub.Subscribe(request, timeout=self.max_call_s)
        with self._lock:
            previous = self._streams.get(peer)
            self._streams[peer] = _Stream(peer, round_no, call)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="streams", daemon=True)
                self._watcher.start()
        if previous is not None:
            previous.call.cancel()

    def route(self, peer: str, round_no: int) -> None:
        """`peer`'s notice: its messages of `round_no` now come on the stream (if this node
        subscribed to that round; a stray notice changes nothing)."""
        with self._lock:
            stream = self._streams.get(peer)
            if stream is not None and stream.round == round_no:
                stream.live = True

    def live(self, peer: str) -> _Stream | None:
        with self._lock:
            stream = self._streams.get(peer)
        return stream if stream is not None and stream.live else None

    def read(
        self, stream: _Stream, timeout: float, timed_out: Callable[[], str],
        failed: Callable[[BaseException], str],
    ) -> bytes | None:
        """The stream's next message; None once the peer has ended the stream (the rest of
        its messages come the usual way). Raises TaskFailed when the task aborts, after
        `timeout` s with nothing (`timed_out()` says why) or when the stream breaks."""
        stream.timed_out = False
        stream.read_until = time.monotonic() + timeout
        try:
            return next(stream.call).data
        except StopIteration:
            self._drop(stream)
            return None
        except grpc.RpcError as exc:
            self._drop(stream)
            if self.state.abort.is_set():
                raise TaskFailed(self.state.abort.reason) from None
            raise TaskFailed(timed_out() if stream.timed_out else failed(exc)) from None
        finally:
            stream.read_until = 0.0

    def _drop(self, stream: _Stream) -> None:
        with self._lock:
            if self._streams.get(stream.peer) is stream:
                del self._streams[stream.peer]

    def _watch(self) -> None:
        while not self._closed.wait(_WATCH_S):
            aborted = self.state.abort.is_set()
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams.values())
            for stream in streams:
                late = stream.read_until and now > stream.read_until
                if aborted or late:
                    stream.timed_out = bool(late)
                    stream.call.cancel()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.call.cancel()


def stream_lost(peer: str, exc: BaseException) -> str:
    """Why a read of `peer`'s stream failed, and what to do."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return (
        f"lost the stream of messages from {peer} ({code.name if code else 'ERROR'}: "
        f"{details}); its node may have stopped or the network between us may be down — "
        "check both, then restart every party with recover=True"
    )
