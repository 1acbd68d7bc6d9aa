"""gRPC glue for the PSI engine: the host's handshake with each collaborator (LINK_OFFER,
LINK_ACCEPT, ENGINE_DONE, then RESULT_KEYS with several collaborators) and the
collaborator-side session that a node's servicer delegates `Psi` to.

The engines' own traffic goes worker to worker over their mutually authenticated TLS link;
this module only tells each worker where the other is and which certificate to trust, over
the Psi RPC whose caller the node has already authenticated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from heteronn.v1 import party_node_pb2, party_node_pb2_grpc
from party_node.psi.engine import (
    BUCKET_SIZE,
    EngineInput,
    EngineRun,
    LinkEnd,
    RunSpec,
    check_certificate,
    free_port,
    id_key,
)
from party_node.psi.frames import MAX_IDS, PsiError
from party_node.psi.protocol import prepare_ids
from party_node.psi.rpc import (
    Cancellation,
    HeaderCheck,
    HeaderFactory,
    PsiCancelled,
    _rpc_error,
)

PsiRequest = party_node_pb2.PsiRequest
PsiResponse = party_node_pb2.PsiResponse
PsiLink = party_node_pb2.PsiLink
PsiStep = party_node_pb2.PsiStep
PsiMessage = PsiRequest | PsiResponse
ENGINES = {"spu-rr22": "rr22", "spu-ecdh": "ecdh"}
KEY_BYTES = 16
#: About 1 MB of keys per RESULT_KEYS chunk.
CHUNK_KEYS = 1 << 16
_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 2.0
#: How long the host waits for a collaborator's ENGINE_DONE once its own worker is done.
_DONE_WAIT_S = 60.0


@dataclass(frozen=True)
class EngineOptions:
    """How this party runs the engine: which protocol, where its worker listens, where its
    files go (they outlive a crash, for `recover`)."""

    engine: str
    folder: Path
    listen_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    port: int = 0
    recover: bool = False
    bucket_size: int = BUCKET_SIZE
    connect_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"psi_engine must be one of {sorted(ENGINES)}, got {self.engine!r}")

    def bind(self) -> tuple[str, str]:
        """(listen, advertise) addresses of this run's worker."""
        port = self.port or free_port(self.listen_host)
        return f"{self.listen_host}:{port}", f"{self.advertise_host}:{port}"


def _check_address(address: str, peer: str, expected_host: str | None) -> str:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(address) > 256:
        raise PsiError(f"{peer} sent engine address {address[:80]!r}; expected HOST:PORT")
    if expected_host is not None and host != expected_host:
        raise PsiError(
            f"{peer} asked for an engine link at {host}, not at its own address {expected_host}"
        )
    return address


def _check_link(message: PsiMessage, step: int, engine: str, peer: str) -> PsiLink:
    if message.step != step:
        raise PsiError(
            f"{peer} sent PSI step {PsiStep.Name(message.step)} where "
            f"{PsiStep.Name(step)} was expected (both parties must run the same "
            "PSI engine; set psi_engine the same on every party)"
        )
    link = message.link
    if link.engine != engine:
        raise PsiError(
            f"{peer} runs PSI engine {link.engine!r}, this party {engine!r}: set psi_engine "
            "the same on every party"
        )
    check_certificate(link.certificate, peer)
    return link


def _link_id(task_id: str, collaborator: str) -> str:
    return f"heteronn-psi/{task_id}/{collaborator}"


def _folder_name(peer: str) -> str:
    return "with-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in peer)


def run_host_engine_psi(
    stubs: Mapping[str, party_node_pb2_grpc.PartyNodeServiceStub],
    ids: Sequence[str],
    header_factory: HeaderFactory,
    options: EngineOptions,
    timeout: float,
    *,
    cancel: Cancellation | None = None,
    check_header: HeaderCheck | None = None,
    peer_hosts: Mapping[str, str] | None = None,
) -> set[str]:
    """The host's whole PSI through the engine: one run per collaborator (one after the
    other: each run uses every core), the final intersection, and with several
    collaborators the final keys to each. Returns the final intersection."""
    if isinstance(ids, str | bytes):
        raise TypeError("ids must be a sequence of str, not a single string")
    if not stubs:
        return set(prepare_ids(ids))
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PsiError(f"PSI did not finish within its timeout of {timeout:g} s")
        return left

    header = header_factory()
    source = EngineInput.write(options.folder, ids, options.recover)
    broadcast = len(stubs) == 1
    final: np.ndarray | None = None
    for name, stub in stubs.items():
        run = EngineRun(options.folder / _folder_name(name), source, header.sender, options.recover)
        try:
            rows = _host_run(
                run,
                name,
                stub,
                header_factory,
                options,
                broadcast,
                remaining,
                cancel,
                check_header,
                (peer_hosts or {}).get(name),
            )
        finally:
            run.close()
        final = rows if final is None else np.intersect1d(final, rows, assume_unique=True)
    assert final is not None
    result = {ids[int(row)] for row in final}
    if not broadcast:
        keys = b"".join(bytes.fromhex(id_key(ids[int(row)])) for row in final)
        for name, stub in stubs.items():
            _deliver_keys(stub, name, keys, header_factory, remaining)
    return result


def _host_run(
    run: EngineRun,
    name: str,
    stub: party_node_pb2_grpc.PartyNodeServiceStub,
    header_factory: HeaderFactory,
    options: EngineOptions,
    broadcast: bool,
    remaining,
    cancel: Cancellation | None,
    check_header: HeaderCheck | None,
    peer_host: str | None,
) -> np.ndarray:
    peer = f"collaborator '{name}'"
    header = header_factory()
    listen, advertise = options.bind()
    link_id = _link_id(header.task_id, name)
    offer = PsiRequest(
        header=header,
        step=party_node_pb2.PSI_STEP_LINK_OFFER,
        total=run.input.count,
        link=PsiLink(
            engine=options.engine,
            address=advertise,
            certificate=run.certificate,
            link_id=link_id,
            broadcast=broadcast,
            bucket_size=options.bucket_size,
            recover=options.recover,
        ),
    )
    delay = _RETRY_FIRST_S
    while True:
        call = stub.Psi(iter([offer]), timeout=remaining(), wait_for_ready=True)
        replies = iter(call)
        try:
            accept = next(replies, None)
            break
        except grpc.RpcError as exc:
            # A collaborator that has not opened its PSI session yet answers UNAVAILABLE.
            retry = (
                isinstance(exc, grpc.Call)
                and exc.code() == grpc.StatusCode.UNAVAILABLE
                and remaining() > delay
                and not (cancel is not None and cancel.is_set())
            )
            if not retry:
                raise _rpc_error(peer, "engine handshake", exc) from None
        time.sleep(delay)
        delay = min(2 * delay, _RETRY_MAX_S)
    try:
        if accept is None:
            raise PsiError(f"{peer} ended the PSI call without accepting the engine link")
        if check_header is not None:
            check_header(accept.header)
        link = _check_link(accept, party_node_pb2.PSI_STEP_LINK_ACCEPT, options.engine, peer)
        address = _check_address(link.address, peer, peer_host)
        if not 0 <= accept.total <= MAX_IDS:
            raise PsiError(f"{peer} announced {accept.total} ids, out of range")
        empty = accept.total == 0 or run.input.count == 0  # spu needs ids on both ends
        if not empty:
            run.start(
                RunSpec(
                    protocol=ENGINES[options.engine],
                    rank=0,
                    link_id=link_id,
                    me=header.sender,
                    peer=name,
                    listen=listen,
                    peer_end=LinkEnd(address, link.certificate),
                    receiver_rank=0,
                    broadcast=broadcast,
                    bucket_size=options.bucket_size,
                    timeout=remaining(),
                    connect_timeout=options.connect_timeout,
                )
            )
        done = futures.Future()
        threading.Thread(
            target=_next_into, args=(replies, done), name="psi-engine-done", daemon=True
        ).start()

        def peer_failed() -> None:
            if done.done() and done.exception() is not None:
                exc = done.exception()
                if isinstance(exc, grpc.RpcError):
                    raise _rpc_error(peer, "engine run", exc)
                raise exc

        if not empty:
            run.wait(remaining(), cancel, peer_failed)
        try:
            message = done.result(min(_DONE_WAIT_S, remaining()))
        except futures.TimeoutError:
            raise PsiError(f"{peer} did not report the end of its engine run") from None
        except grpc.RpcError as exc:
            raise _rpc_error(peer, "engine run", exc) from None
        if message is None or message.step != party_node_pb2.PSI_STEP_ENGINE_DONE:
            raise PsiError(f"{peer} ended the engine run without ENGINE_DONE")
        return np.zeros(0, dtype=np.int64) if empty else run.rows()
    except BaseException:
        call.cancel()
        raise


def _next_into(replies: Iterator[PsiResponse], done: futures.Future) -> None:
    try:
        done.set_result(next(replies, None))
    except BaseException as exc:
        done.set_exception(exc)


def _deliver_keys(
    stub: party_node_pb2_grpc.PartyNodeServiceStub,
    name: str,
    keys: bytes,
    header_factory: HeaderFactory,
    remaining,
) -> None:
    count = len(keys) // KEY_BYTES
    cut = CHUNK_KEYS * KEY_BYTES

    def messages() -> Iterator[PsiRequest]:
        starts = range(0, max(len(keys), 1), cut)
        for index, start in enumerate(starts):
            yield PsiRequest(
                header=header_factory(),
                step=party_node_pb2.PSI_STEP_RESULT_KEYS,
                data=keys[start : start + cut],
                total=count if index == 0 else 0,
                last=start + cut >= len(keys),
            )

    try:
        for _ in stub.Psi(messages(), timeout=remaining(), wait_for_ready=True):
            raise PsiError(f"collaborator '{name}' answered the PSI result with data")
    except grpc.RpcError as exc:
        raise _rpc_error(f"collaborator '{name}'", "result delivery", exc) from None


class EngineCollaboratorSession:
    """A collaborator's PSI for one task through the engine. The node's servicer calls
    `handle` for each Psi call from the host; the task runtime blocks in `wait_result`.
    The input file is written from construction on, so it is ready when the host calls."""

    def __init__(
        self,
        ids: Sequence[str],
        options: EngineOptions,
        header_factory: HeaderFactory,
        *,
        node_id: str,
        timeout: float,
        peer: str = "host",
        check_header: HeaderCheck | None = None,
        peer_host: str | None = None,
    ) -> None:
        if isinstance(ids, str | bytes):
            raise TypeError("ids must be a sequence of str, not a single string")
        self._ids = ids
        self.options = options
        self.peer = peer
        self._node_id = node_id
        self._timeout = timeout
        self._header = header_factory
        self._check = check_header
        self._peer_host = peer_host
        self._lock = threading.Lock()
        self._state = "waiting"  # -> running -> exchanged -> done | failed
        self._error: str | None = None
        self._finished = threading.Event()
        self._stop = threading.Event()
        self._result: set[str] | None = None
        self._input: futures.Future[EngineInput] = futures.Future()
        threading.Thread(target=self._write_input, name="psi-input", daemon=True).start()

    def _write_input(self) -> None:
        try:
            self._input.set_result(
                EngineInput.write(self.options.folder, self._ids, self.options.recover)
            )
        except BaseException as exc:
            self._input.set_exception(exc)

    @property
    def size(self) -> int:
        return len(self._ids)

    def handle(
        self, request_iterator: Iterable[PsiMessage], context: grpc.ServicerContext | None = None
    ) -> Iterator[PsiMessage]:
        """Serve one Psi call; protocol errors end it with FAILED_PRECONDITION and the reason."""
        try:
            yield from self._serve(iter(request_iterator), context)
        except PsiError as exc:
            self._fail(str(exc))
            if context is None:
                raise
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except BaseException as exc:
            if self._state not in ("exchanged", "done"):
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._fail(f"the {self.peer}'s PSI call ended early ({reason})")
            raise

    def _serve(
        self, messages: Iterator[PsiMessage], context: grpc.ServicerContext | None
    ) -> Iterator[PsiMessage]:
        first = next(messages, None)
        if first is None:
            raise PsiError(f"the {self.peer} opened a PSI call and sent nothing")
        if self._check is not None:
            self._check(first.header)
        if first.step == party_node_pb2.PSI_STEP_LINK_OFFER:
            yield from self._run(first, context)
        elif first.step == party_node_pb2.PSI_STEP_RESULT_KEYS:
            self._accept_keys(first, messages)
        else:
            raise PsiError(
                f"the {self.peer} opened a PSI call with step {PsiStep.Name(first.step)}; "
                f"this party runs PSI engine {self.options.engine!r} (set psi_engine the same "
                "on every party)"
            )

    def _run(self, offer: PsiMessage, context: grpc.ServicerContext | None) -> Iterator[PsiMessage]:
        self._advance("waiting", "running", "a second PSI engine run for this task")
        link = _check_link(
            offer, party_node_pb2.PSI_STEP_LINK_OFFER, self.options.engine, self.peer
        )
        address = _check_address(link.address, f"the {self.peer}", self._peer_host)
        if not 0 < link.bucket_size <= MAX_IDS:
            raise PsiError(f"the {self.peer} asked for engine buckets of {link.bucket_size} ids")
        source = self._input.result(self._timeout)
        run = EngineRun(
            self.options.folder / _folder_name(offer.header.sender),
            source,
            self._node_id,
            link.recover,
        )
        try:
            listen, advertise = self.options.bind()
            yield PsiResponse(
                header=self._header(),
                step=party_node_pb2.PSI_STEP_LINK_ACCEPT,
                total=source.count,
                link=PsiLink(
                    engine=self.options.engine, address=advertise, certificate=run.certificate
                ),
            )
            if not 0 <= offer.total <= MAX_IDS:
                raise PsiError(f"the {self.peer} announced {offer.total} ids, out of range")
            empty = offer.total == 0 or source.count == 0  # no engine run: nothing in common
            if not empty:
                run.start(
                    RunSpec(
                        protocol=ENGINES[self.options.engine],
                        rank=1,
                        link_id=link.link_id,
                        me=self._node_id,
                        peer=offer.header.sender,
                        listen=listen,
                        peer_end=LinkEnd(address, link.certificate),
                        receiver_rank=0,
                        broadcast=link.broadcast,
                        bucket_size=link.bucket_size,
                        timeout=self._timeout,
                        connect_timeout=self.options.connect_timeout,
                    )
                )

            def stopped() -> None:
                if self._stop.is_set():
                    raise PsiCancelled("PSI cancelled: the task is stopping")
                if context is not None and not context.is_active():
                    raise PsiError(f"the {self.peer} cancelled the PSI call")

            result = {"intersection": 0} if empty else run.wait(self._timeout, check=stopped)
            if link.broadcast:
                rows = [] if empty else run.rows()
                with self._lock:
                    self._result = {self._ids[int(row)] for row in rows}
                    self._state = "done"
                self._finished.set()
            else:
                self._advance("running", "exchanged", "")
        finally:
            run.close()
        total = result.get("intersection", 0) if link.broadcast else 0
        yield PsiResponse(
            header=self._header(), step=party_node_pb2.PSI_STEP_ENGINE_DONE, total=total
        )

    def _accept_keys(self, first: PsiMessage, messages: Iterator[PsiMessage]) -> None:
        self._advance("exchanged", "accepting", "the PSI result before finishing the engine run")
        total = first.total
        if not 0 <= total <= self.size:
            raise PsiError(
                f"the {self.peer} announced {total} result keys; this party has "
                f"{len(self._ids)} ids"
            )
        wanted: set[bytes] = set()
        message = first
        while True:
            if message.step != party_node_pb2.PSI_STEP_RESULT_KEYS or len(message.data) % KEY_BYTES:
                raise PsiError(f"the {self.peer} sent a malformed RESULT_KEYS chunk")
            data = message.data
            wanted.update(data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES))
            if len(wanted) > total:
                raise PsiError(f"the {self.peer} sent more result keys than it announced")
            if message.last:
                break
            message = next(messages, None)
            if message is None:
                raise PsiError(f"the {self.peer}'s result ended before its last chunk")
            if self._check is not None:
                self._check(message.header)
        if len(wanted) != total:
            raise PsiError(f"the {self.peer} sent {len(wanted)} distinct result keys of {total}")
        result = {item for item in self._ids if bytes.fromhex(id_key(item)) in wanted}
        if len(result) != total:
            raise PsiError(
                f"the {self.peer} sent {total - len(result)} result keys that are none of this "
                "party's ids"
            )
        with self._lock:
            self._result = result
            self._state = "done"
        self._finished.set()

    def _advance(self, expected: str, new: str, wrong: str) -> None:
        with self._lock:
            if self._state != expected:
                if self._state == "failed":
                    raise PsiError(f"PSI already failed: {self._error}")
                raise PsiError(f"the {self.peer} sent {wrong} (PSI is {self._state})")
            self._state = new

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._state in ("done", "failed"):
                return
            self._state = "failed"
            self._error = reason
        self._stop.set()
        self._finished.set()

    def wait_result(self, timeout: float, cancel: Cancellation | None = None) -> set[str]:
        """Block until this party knows the final intersection; PsiError when PSI failed,
        PsiCancelled on cancel, TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._finished.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
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
