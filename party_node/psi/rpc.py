"""gRPC glue for PSI: PsiFrame <-> PsiRequest/PsiResponse, the host's calls to every
collaborator, and the collaborator-side session that a node's servicer delegates its `Psi`
method to.

The protocol itself lives in party_node.psi.protocol; this module only moves frames and turns
failures into errors that name the peer."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Protocol

import grpc

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi.frames import time_left
from party_node.psi.pool import CHUNK_POINTS, PsiPool
from party_node.psi.protocol import (
    BLINDED,
    DOUBLE_BLINDED,
    PEER_BLINDED,
    RESULT_INDICES,
    CollaboratorPsi,
    HostBlinding,
    HostPsi,
    PsiError,
    PsiFrame,
    intersect_all,
    prepare_ids,
)

#: A PSI chunk on the wire: PsiRequest (host to collaborator) or PsiResponse (back).
PsiMessage = party_node_pb2.PsiRequest | party_node_pb2.PsiResponse
HeaderFactory = Callable[[], common_pb2.Header]
HeaderCheck = Callable[[common_pb2.Header], None]

_TO_PROTO = {
    BLINDED: party_node_pb2.PSI_STEP_BLINDED,
    DOUBLE_BLINDED: party_node_pb2.PSI_STEP_DOUBLE_BLINDED,
    PEER_BLINDED: party_node_pb2.PSI_STEP_PEER_BLINDED,
    RESULT_INDICES: party_node_pb2.PSI_STEP_RESULT_INDICES,
}
_FROM_PROTO = {value: key for key, value in _TO_PROTO.items()}
#: How often blocking waits look at the cancel signal.
_POLL_S = 0.1
#: Back-off while a collaborator is not ready for PSI yet.
_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 2.0


class Cancellation(Protocol):
    """Anything with `is_set()`: a threading.Event or the runtime's AbortSignal."""

    def is_set(self) -> bool: ...


class PsiCancelled(PsiError):
    """The task was cancelled while PSI was running."""


class PsiRpcError(PsiError):
    """A PSI call to a peer failed at the gRPC level; `peer` and `code` say which and how."""

    def __init__(self, message: str, peer: str, code: grpc.StatusCode | None):
        super().__init__(message)
        self.peer = peer
        self.code = code


def frame_to_proto(
    frame: PsiFrame,
    header: common_pb2.Header,
    kind: type[PsiMessage] = party_node_pb2.PsiRequest,
) -> PsiMessage:
    """A frame as a PsiRequest (host side, the default) or a PsiResponse (collaborator)."""
    return kind(
        header=header,
        step=_TO_PROTO[frame.step],
        data=frame.data,
        total=frame.total,
        last=frame.last,
    )


def frame_from_proto(message: PsiMessage, peer: str = "peer") -> PsiFrame:
    step = _FROM_PROTO.get(message.step)
    if step is None:
        raise PsiError(f"{peer} sent a PSI message with no valid step (step={message.step})")
    return PsiFrame(step=step, data=message.data, total=message.total, last=message.last)


def _frames_in(
    messages: Iterable[PsiMessage], peer: str, check_header: HeaderCheck | None
) -> Iterator[PsiFrame]:
    for message in messages:
        if check_header is not None:
            check_header(message.header)
        yield frame_from_proto(message, peer)


def _keeping_error(
    messages: Iterator[PsiMessage], failed: list[BaseException]
) -> Iterator[PsiMessage]:
    """gRPC reports an exception in a request stream only as UNKNOWN; keep the original."""
    try:
        yield from messages
    except Exception as exc:
        failed.append(exc)
        raise


def _noting_first(messages: Iterable[PsiMessage], seen: list[PsiMessage]) -> Iterator[PsiMessage]:
    """Pass messages through, keeping the first in `seen` (did the peer answer at all?)."""
    for message in messages:
        if not seen:
            seen.append(message)
        yield message


def _rpc_error(peer: str, what: str, exc: grpc.RpcError) -> PsiRpcError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    name = code.name if code is not None else "ERROR"
    hint = ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        hint = "; check that its node is running and reachable, and the PSI timeout"
    return PsiRpcError(f"PSI {what} with {peer} failed: {name}: {details}{hint}", peer, code)


def _run_all(
    jobs: Mapping[str, Callable[[], None]],
    calls: dict[str, grpc.Future],
    cancel: Cancellation | None,
) -> None:
    """Run one job per collaborator in threads; on the first failure or on cancel, cancel
    every call still open and raise."""
    with futures.ThreadPoolExecutor(max(1, len(jobs)), thread_name_prefix="psi-rpc") as pool:
        pending = {pool.submit(job): name for name, job in jobs.items()}
        try:
            while pending:
                done, _ = futures.wait(pending, _POLL_S, futures.FIRST_EXCEPTION)
                for future in done:
                    pending.pop(future)
                    future.result()
                if cancel is not None and cancel.is_set():
                    raise PsiCancelled("PSI cancelled: the task is stopping")
        except BaseException:
            for call in list(calls.values()):
                call.cancel()
            raise


def run_host_psi(
    stubs: Mapping[str, party_node_pb2_grpc.PartyNodeServiceStub],
    ids: Sequence[str],
    header_factory: HeaderFactory,
    pool: PsiPool,
    timeout: float,
    *,
    cancel: Cancellation | None = None,
    check_header: HeaderCheck | None = None,
    chunk_points: int = CHUNK_POINTS,
    peer_sizes: dict[str, int] | None = None,
) -> set[str]:
    """The host's whole PSI: one exchange per collaborator (concurrently), the final
    intersection, then each collaborator's result indices. Returns the final intersection;
    fills `peer_sizes` with each collaborator's set size (what PSI reveals anyway).

    `timeout` bounds the whole run; `cancel` stops it early (PsiCancelled)."""
    if not stubs:
        return set(prepare_ids(ids))
    deadline = time.monotonic() + timeout  # the retry below stops short of it
    remaining = time_left(timeout)

    blinding = HostBlinding(ids, pool)  # checks and de-duplicates the ids
    hosts = {
        name: HostPsi(blinding, pool, peer=f"collaborator '{name}'", chunk_points=chunk_points)
        for name in stubs
    }
    calls: dict[str, grpc.Future] = {}

    def exchange(name: str) -> None:
        host = hosts[name]
        delay = _RETRY_FIRST_S
        while True:
            replies: list[PsiMessage] = []
            failed: list[BaseException] = []
            requests = _keeping_error(
                (frame_to_proto(f, header_factory()) for f in host.blinded_frames()), failed
            )
            call = stubs[name].Psi(requests, timeout=remaining(), wait_for_ready=True)
            calls[name] = call
            try:
                host.consume(_frames_in(_noting_first(call, replies), host.peer, check_header))
                # Read to the end of the call, so it finishes with OK rather than a cancel.
                for _ in call:
                    raise PsiError(f"{host.peer} sent data after its last peer_blinded chunk")
                return
            except grpc.RpcError as exc:
                if failed:  # our own request stream broke: that, not gRPC's UNKNOWN, is news
                    raise failed[0] from None
                # A collaborator that has not opened its PSI session yet answers UNAVAILABLE
                # before anything else: try again until the deadline.
                retry = (
                    isinstance(exc, grpc.Call)
                    and exc.code() == grpc.StatusCode.UNAVAILABLE
                    and not replies
                    and deadline - time.monotonic() > delay
                    and not (cancel is not None and cancel.is_set())
                )
                if not retry:
                    raise _rpc_error(host.peer, "exchange", exc) from None
            time.sleep(delay)
            delay = min(2 * delay, _RETRY_MAX_S)

    try:
        _run_all({name: (lambda n=name: exchange(n)) for name in stubs}, calls, cancel)
    finally:
        blinding.cancel()
    final = intersect_all(list(hosts.values()))
    if peer_sizes is not None:
        peer_sizes.update({name: host.peer_size or 0 for name, host in hosts.items()})
    calls.clear()

    def deliver(name: str) -> None:
        host = hosts[name]
        requests = (frame_to_proto(f, header_factory()) for f in host.result_frames(final))
        call = stubs[name].Psi(requests, timeout=remaining(), wait_for_ready=True)
        calls[name] = call
        try:
            for _ in call:
                raise PsiError(f"{host.peer} answered the PSI result with data; expected none")
        except grpc.RpcError as exc:
            raise _rpc_error(host.peer, "result delivery", exc) from None

    _run_all({name: (lambda n=name: deliver(n)) for name in stubs}, calls, cancel)
    return final


class SessionState:
    """The state every collaborator-side PSI session keeps: where the exchange is, its
    error, its result; `wait_result` for the runtime, `close` when the task ends."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self._lock = threading.Lock()
        self._state = "waiting"
        self._error: str | None = None
        self._finished = threading.Event()
        self._result: set[str] | None = None

    #: Status of a call that broke this session's protocol.
    protocol_error_code = grpc.StatusCode.FAILED_PRECONDITION

    def handle(
        self, request_iterator: Iterable[PsiMessage], context: grpc.ServicerContext | None = None
    ) -> Iterator[PsiMessage]:
        """Serve one Psi call. With `context`, protocol errors end the call with
        `protocol_error_code` and the message; without it, PsiError propagates."""
        try:
            yield from self._serve(iter(request_iterator), context)
        except PsiError as exc:
            self._fail(str(exc))
            if context is None:
                raise
            context.abort(self.protocol_error_code, str(exc))
        except BaseException as exc:
            # The call was cancelled, timed out or the connection broke mid-exchange. Once
            # this party's last message is out ("exchanged"), a closed call is harmless.
            if self._state not in ("exchanged", "done") and not self._handed_off(context):
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._fail(f"the {self.peer}'s PSI call ended early ({reason})")
            raise

    def _serve(
        self, messages: Iterator[PsiMessage], context: grpc.ServicerContext | None
    ) -> Iterator[PsiMessage]:
        raise NotImplementedError

    def _stopped(self) -> None:
        """Stop this session's own work (blinding, a worker); called once, on failure."""

    def _handed_off(self, context: grpc.ServicerContext | None) -> bool:
        """Whether this call gave the session to a later call (its end then harms nothing)."""
        return False

    def _advance(self, expected: str, new: str, wrong: str) -> None:
        with self._lock:
            if self._state != expected:
                if self._state == "failed":
                    raise PsiError(f"PSI already failed: {self._error}")
                raise PsiError(f"the {self.peer} sent {wrong} (PSI is {self._state})")
            self._state = new

    def _done(self, result: set[str]) -> None:
        with self._lock:
            self._result = result
            self._state = "done"
        self._finished.set()

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._state in ("done", "failed"):
                return
            self._state = "failed"
            self._error = reason
        self._stopped()
        self._finished.set()

    def wait_result(self, timeout: float, cancel: Cancellation | None = None) -> set[str]:
        """Block until this party knows the final intersection; raise PsiError when PSI
        failed, PsiCancelled on cancel, TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._finished.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
            if cancel is not None and cancel.is_set():
                self._fail("cancelled")
                raise PsiCancelled("PSI cancelled: the task is stopping")
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the {self.peer} did not complete PSI within {timeout:g} s "
                    f"(PSI is {self._state}); check that the {self.peer} is running"
                )
        with self._lock:
            if self._result is None:
                raise PsiError(f"PSI failed: {self._error}")
            return set(self._result)

    def close(self) -> None:
        self._fail("closed")


class CollaboratorPsiSession(SessionState):
    """A collaborator's PSI for one task. The node's servicer calls `handle` for each Psi
    call from the host (the exchange, then the result); the task runtime blocks in
    `wait_result`. Blinding of this party's ids starts at construction."""

    def __init__(
        self,
        ids: Sequence[str],
        pool: PsiPool,
        header_factory: HeaderFactory,
        *,
        peer: str = "host",
        check_header: HeaderCheck | None = None,
        chunk_points: int = CHUNK_POINTS,
    ) -> None:
        super().__init__(peer)  # waiting -> exchanging -> exchanged -> done | failed
        self._psi = CollaboratorPsi(ids, pool, peer=peer, chunk_points=chunk_points)
        self._header = header_factory
        self._check = check_header

    #: Status of a call that broke the ECDH protocol (a malformed frame is a bad argument).
    protocol_error_code = grpc.StatusCode.INVALID_ARGUMENT

    def _serve(
        self, messages: Iterator[PsiMessage], context: grpc.ServicerContext | None
    ) -> Iterator[PsiMessage]:
        frames = _frames_in(messages, self.peer, self._check)
        first = next(frames, None)
        if first is None:
            raise PsiError(f"the {self.peer} opened a PSI call and sent nothing")
        stream = itertools.chain([first], frames)
        if first.step == BLINDED:
            self._advance("waiting", "exchanging", "a second PSI exchange for this task")
            for frame in self._psi.respond(stream):
                if frame.step == PEER_BLINDED and frame.last:
                    # Before the host can see the last chunk and send the result.
                    self._advance("exchanging", "exchanged", "")
                yield frame_to_proto(frame, self._header(), party_node_pb2.PsiResponse)
        elif first.step == RESULT_INDICES:
            self._advance("exchanged", "accepting", "the PSI result before finishing the exchange")
            self._done(self._psi.accept_result(stream))
        else:
            raise PsiError(f"the {self.peer} opened a PSI call with a {first.step!r} chunk")

    def _stopped(self) -> None:
        self._psi.close()

    @property
    def size(self) -> int:
        return self._psi.size

    @property
    def peer_size(self) -> int | None:
        """The host's set size, once its blinded set has arrived."""
        return self._psi.peer_size


def serve_psi(
    session: CollaboratorPsiSession,
    request_iterator: Iterable[PsiMessage],
    context: grpc.ServicerContext,
) -> Iterator[PsiMessage]:
    """The body of a servicer's `Psi` method on a collaborator node."""
    return session.handle(request_iterator, context)
