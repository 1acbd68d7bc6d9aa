"""gRPC glue for the PSI engine: the host's handshake with each collaborator (LINK_OFFER,
LINK_ACCEPT, ENGINE_DONE, then RESULT_KEYS with several collaborators) and the
collaborator-side session that a node's servicer delegates `Psi` to.

The engines' own traffic goes worker to worker over their mutually authenticated TLS link;
this module only tells each worker where the other is and which certificate to trust, over
the Psi RPC whose caller the node has already authenticated."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np

from heteronn.v1 import party_node_pb2, party_node_pb2_grpc
from party_node.psi.engine import (
    BUCKET_SIZE,
    EngineRun,
    LinkEnd,
    ResumeFailed,
    RunSpec,
    check_certificate,
    free_port,
)
from party_node.psi.engine_files import EngineInput
from party_node.psi.frames import MAX_IDS, PsiError, time_left
from party_node.psi.protocol import prepare_ids
from party_node.psi.result_keys import deliver_keys, keys_of
from party_node.psi.rpc import (
    Cancellation,
    HeaderCheck,
    HeaderFactory,
    _rpc_error,
)

PsiRequest = party_node_pb2.PsiRequest
PsiResponse = party_node_pb2.PsiResponse
PsiLink = party_node_pb2.PsiLink
PsiStep = party_node_pb2.PsiStep
PsiMessage = PsiRequest | PsiResponse
ENGINES = {"spu-rr22": "rr22", "spu-ecdh": "ecdh"}
_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 2.0
#: How long the host waits for a collaborator's ENGINE_DONE once its own worker is done.
_DONE_WAIT_S = 60.0
#: After a resumed run failed, how long each party waits for the other to begin the fresh
#: run (the host's restart offer, the collaborator's answer to it).
RESTART_WAIT_S = 60.0
_log = logging.getLogger("heteronn.psi")


def log_restart(where: str) -> None:
    """Say that a resumed engine run failed and PSI starts again from scratch (no ids, no
    names, no spu text: spu's messages may quote keys)."""
    _log.warning(
        "the PSI engine could not resume the interrupted run (it failed at %s); "
        "PSI restarted from scratch",
        where,
    )


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
    peer_sizes: dict[str, int] | None = None,
) -> set[str]:
    """The host's whole PSI through the engine: one run per collaborator (one after the
    other: each run uses every core), the final intersection, and with several
    collaborators the final keys to each. Returns the final intersection."""
    if isinstance(ids, str | bytes):
        raise TypeError("ids must be a sequence of str, not a single string")
    if not stubs:
        return set(prepare_ids(ids))

    remaining = time_left(timeout)

    header = header_factory()
    source = EngineInput.write(options.folder, ids, options.recover)
    broadcast = len(stubs) == 1
    final: np.ndarray | None = None
    for name, stub in stubs.items():
        attempt = functools.partial(
            _host_run,
            name=name,
            stub=stub,
            header_factory=header_factory,
            broadcast=broadcast,
            remaining=remaining,
            cancel=cancel,
            check_header=check_header,
            peer_host=(peer_hosts or {}).get(name),
            peer_sizes=peer_sizes,
        )
        run_folder = options.folder / _folder_name(name)
        rows = _with_one_restart(attempt, run_folder, source, header.sender, options)
        final = rows if final is None else np.intersect1d(final, rows, assume_unique=True)
    assert final is not None
    result = {ids[int(row)] for row in final}
    if not broadcast:
        keys = keys_of(ids[int(row)] for row in final)
        for name, stub in stubs.items():
            deliver_keys(stub, name, keys, header_factory, remaining(), _rpc_error)
    return result


def _with_one_restart(
    attempt: Callable[..., np.ndarray],
    folder: Path,
    source: EngineInput,
    sender: str,
    options: EngineOptions,
) -> np.ndarray:
    """One run with a collaborator; if it resumed an interrupted run and spu failed at either
    end (`ResumeFailed`), one more run afresh, offered with `PsiLink.restart` (spu cannot
    always continue two checkpoints that ended at different buckets)."""
    run = EngineRun(folder, source, sender, options.recover)
    try:
        return attempt(run, options=options, restart=False)
    except ResumeFailed as exc:
        where = "the collaborator" if isinstance(exc, PeerResumeFailed) else "this party"
    finally:
        run.close()
    log_restart(where)
    fresh = replace(options, recover=False)
    run = EngineRun(folder, source, sender, recover=False)
    try:
        return attempt(run, options=fresh, restart=True)
    finally:
        run.close()


class PeerResumeFailed(ResumeFailed):
    """The collaborator said its resumed run failed (PSI_STEP_ENGINE_RESUME_FAILED)."""


def _peer_resume_failed(message: PsiResponse | None, recover: bool, peer: str) -> None:
    """Raise if the collaborator's reply says its resumed run failed; only a recovered run
    may say so."""
    if message is None or message.step != party_node_pb2.PSI_STEP_ENGINE_RESUME_FAILED:
        return
    if not recover:
        raise PsiError(f"{peer} said its resumed engine run failed, but this run was not resumed")
    raise PeerResumeFailed(f"{peer}'s PSI engine could not resume the interrupted run")


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
    peer_sizes: dict[str, int] | None = None,
    restart: bool = False,
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
            finished=options.recover and run.finished,
            restart=restart,
        ),
    )
    delay = _RETRY_FIRST_S
    # The collaborator is up when a run restarts: a dead one fails the handshake soon.
    handshake_until = time.monotonic() + (RESTART_WAIT_S if restart else remaining())
    while True:
        call = stub.Psi(iter([offer]), timeout=remaining(), wait_for_ready=not restart)
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
                and handshake_until > time.monotonic() + delay
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
        if peer_sizes is not None:  # what PSI reveals anyway, for heteronn_psi_set_size
            peer_sizes[name] = accept.total
        empty = accept.total == 0 or run.input.count == 0  # spu needs ids on both ends
        reuse = options.recover and run.plan_recovery(link.finished)
        if not (empty or reuse):
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
            if done.done():  # its worker failed first: stop ours, restart both
                _peer_resume_failed(done.result(), options.recover, peer)

        if not (empty or reuse):
            run.wait(remaining(), cancel, peer_failed)
        try:
            message = done.result(min(_DONE_WAIT_S, remaining()))
        except futures.TimeoutError:
            raise PsiError(f"{peer} did not report the end of its engine run") from None
        except grpc.RpcError as exc:
            raise _rpc_error(peer, "engine run", exc) from None
        _peer_resume_failed(message, options.recover, peer)
        if message is None or message.step != party_node_pb2.PSI_STEP_ENGINE_DONE:
            raise PsiError(f"{peer} ended the engine run without ENGINE_DONE")
        rows = np.zeros(0, dtype=np.int64) if empty else run.rows()
        # The collaborator maps its own rows after ENGINE_DONE: read the call to its end.
        try:
            for _ in replies:
                raise PsiError(f"{peer} sent data after ENGINE_DONE")
        except grpc.RpcError as exc:
            raise _rpc_error(peer, "engine run", exc) from None
        return rows
    except BaseException:
        call.cancel()
        raise


def _next_into(replies: Iterator[PsiResponse], done: futures.Future) -> None:
    try:
        done.set_result(next(replies, None))
    except BaseException as exc:
        done.set_exception(exc)
