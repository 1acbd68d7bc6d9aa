"""gRPC glue for the multi-party PSI (`multiparty.py`): the host's run, which relays every
step between the collaborators, and the framing both ends share. The collaborator's side is
`multiparty_session.py`.

The host calls each collaborator (only the task's host may: the node checks the caller's
certificate and the header's sender before a session sees a message); collaborators never
talk to each other. Each call carries one step and is answered by the next (the diagram is
in proto/heteronn/v1/party_node.proto and docs/psi.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures

import grpc

from heteronn.v1 import party_node_pb2, party_node_pb2_grpc
from party_node.psi.frames import MAX_IDS, PsiError, PsiFrame, StepReader, frames_of, time_left
from party_node.psi.multiparty import MultipartyHost
from party_node.psi.result_keys import HeaderCheck, HeaderFactory, deliver_keys
from party_node.psi.rpc import Cancellation, _rpc_error, _run_all
from party_node.psi.x25519 import POINT_BYTES

PsiRequest = party_node_pb2.PsiRequest
PsiResponse = party_node_pb2.PsiResponse
PsiMessage = PsiRequest | PsiResponse
PsiStep = party_node_pb2.PsiStep
#: Points per chunk on the wire (1 MB).
CHUNK_POINTS = 1 << 15
#: Size of b wrapped for one collaborator (ephemeral key, nonce, sealed key and tag).
WRAPPED_BYTES = 92
_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 2.0


def step_name(step: int) -> str:
    """'mp_blinded' for PSI_STEP_MP_BLINDED: how errors name a step."""
    try:
        return PsiStep.Name(step).removeprefix("PSI_STEP_").lower()
    except ValueError:
        return f"step {step}"


def wrap_context(task_id: str, collaborator: str) -> bytes:
    """What a wrapped b is bound to: this task and its one recipient."""
    return f"heteronn-psi/{task_id}/{collaborator}".encode()


def messages_of(
    step: int,
    data: bytes,
    header_factory: HeaderFactory,
    kind: type[PsiMessage] = PsiRequest,
    multiparty: party_node_pb2.PsiMultiparty | None = None,
) -> Iterator[PsiMessage]:
    """One step as ~1 MB chunks: `total` (points) on the first, `last` on the final one."""
    cut = CHUNK_POINTS * POINT_BYTES
    chunks = (data[start : start + cut] for start in range(0, len(data), cut))
    for frame in frames_of(step_name(step), chunks, len(data) // POINT_BYTES):
        yield kind(
            header=header_factory(),
            step=step,
            data=frame.data,
            total=frame.total,
            last=frame.last,
            **({"multiparty": multiparty} if multiparty is not None else {}),
        )


def frames_from(
    messages: Iterable[PsiMessage], check_header: HeaderCheck | None
) -> Iterator[PsiFrame]:
    for message in messages:
        if check_header is not None:
            check_header(message.header)
        yield PsiFrame(step_name(message.step), message.data, message.total, message.last)


def read_step(
    frames: Iterator[PsiFrame],
    step: int,
    peer: str,
    *,
    expected: int | None = None,
    most: int = MAX_IDS,
    why: str = "",
) -> StepReader:
    """The chunks of one step of whole points, checked (iterate it; `.total` once read)."""
    return StepReader(frames, step_name(step), peer, POINT_BYTES, expected, most=most, why=why)


def read_all(frames: Iterator[PsiFrame], step: int, peer: str, **bounds) -> bytes:
    return b"".join(read_step(frames, step, peer, **bounds))


def _single(frames: Iterator[PsiFrame], step: int, peer: str, size: int) -> bytes:
    """A one-message step of exactly `size` bytes."""
    frame = next(frames, None)
    if frame is None or frame.step != step_name(step) or not frame.last:
        got = "nothing" if frame is None else frame.step
        raise PsiError(f"{peer} sent {got} where one {step_name(step)} message was expected")
    if len(frame.data) != size:
        raise PsiError(f"{peer} sent {len(frame.data)} bytes of {step_name(step)}; expected {size}")
    return frame.data


def run_host_multiparty_psi(
    stubs: Mapping[str, party_node_pb2_grpc.PartyNodeServiceStub],
    ids: Sequence[str],
    header_factory: HeaderFactory,
    timeout: float,
    *,
    cancel: Cancellation | None = None,
    check_header: Callable[[str], HeaderCheck] | None = None,
    peer_sizes: dict[str, int] | None = None,
) -> set[str]:
    """The host's whole multi-party PSI with two or more collaborators (in `stubs`' order:
    the first makes the shared key b, the second tags). Returns the final intersection; the
    host learns nothing else about the collaborators' ids but sizes (docs/psi.md).
    `check_header(name)` gives the check of that collaborator's message headers."""
    if isinstance(ids, str | bytes):
        raise TypeError("ids must be a sequence of str, not a single string")
    names = list(stubs)
    host = MultipartyHost(ids, names)
    keeper, tagger = host.roles.keeper, host.roles.tagger

    remaining = time_left(timeout)

    calls: dict[str, grpc.Future] = {}
    lock = threading.Lock()

    def call(name: str, requests: Iterator[PsiRequest], what: str) -> Iterator[PsiFrame]:
        """Open a Psi call to `name`; its answers as checked frames."""
        stream = stubs[name].Psi(requests, timeout=remaining(), wait_for_ready=True)
        with lock:
            calls[name] = stream
        return _errors_named(
            frames_from(stream, check_header(name) if check_header else None), name, what
        )

    def finish(frames: Iterator[PsiFrame], name: str) -> None:
        for frame in frames:
            raise PsiError(f"collaborator '{name}' sent {frame.step} after its last step")

    # Host's own P(x)^a, from now on, in the background.
    with futures.ThreadPoolExecutor(1, thread_name_prefix="psi-mp-own") as own_pool:
        own = own_pool.submit(host.blinded_ids)
        try:
            public = _hello_all(names, call, header_factory, remaining, cancel, calls)
            wrapped = _wrap(names, keeper, public, call, header_factory, finish)
            lists: dict[str, bytes] = {}
            sizes: dict[str, int] = {}

            def exchange(name: str) -> None:
                peer = f"collaborator '{name}'"
                frames = call(
                    name,
                    _one(
                        PsiStep.Value("PSI_STEP_MP_SHARED_KEY"),
                        wrapped.get(name, b""),
                        header_factory,
                    ),
                    "key delivery",
                )
                blinded = read_all(frames, PsiStep.Value("PSI_STEP_MP_BLINDED"), peer)
                finish(frames, name)
                sizes[name] = len(blinded) // POINT_BYTES
                lists[name] = blinded
                if name == tagger:
                    mine = own.result(remaining())
                    step = PsiStep.Value("PSI_STEP_MP_HOST_IDS")
                    frames = call(name, messages_of(step, mine, header_factory), "tagging")
                    tagged = read_all(
                        frames,
                        PsiStep.Value("PSI_STEP_MP_TAGGED_IDS"),
                        peer,
                        expected=len(mine) // POINT_BYTES,
                    )
                    finish(frames, name)
                    host.accept_tagged_ids(tagged)

            _run_all({name: (lambda n=name: exchange(n)) for name in names}, calls, cancel)
        finally:
            own.cancel()
    if peer_sizes is not None:  # what the protocol reveals to the host anyway
        peer_sizes.update(sizes)
    # The points in every list, intersected here under b alone (no key of the host's opens
    # them), then ^a and reshuffled for the tagger.
    common = host.common([lists.pop(name) for name in names])
    common_step = PsiStep.Value("PSI_STEP_MP_COMMON")
    frames = call(tagger, messages_of(common_step, common, header_factory), "tagging")
    tagged = read_all(
        frames,
        PsiStep.Value("PSI_STEP_MP_TAGGED_COMMON"),
        f"collaborator '{tagger}'",
        expected=len(common) // POINT_BYTES,
    )
    finish(frames, tagger)
    final = host.accept_tagged_common(tagged)
    keys = host.result_keys()
    calls.clear()
    _run_all(
        {
            name: (
                lambda n=name: deliver_keys(
                    stubs[n], n, keys, header_factory, remaining(), _rpc_error
                )
            )
            for name in names
        },
        calls,
        cancel,
    )
    return final


def _one(step: int, data: bytes, header_factory: HeaderFactory, **fields) -> Iterator[PsiRequest]:
    yield PsiRequest(header=header_factory(), step=step, data=data, last=True, **fields)


def _errors_named(frames: Iterator[PsiFrame], name: str, what: str) -> Iterator[PsiFrame]:
    try:
        yield from frames
    except grpc.RpcError as exc:
        raise _rpc_error(f"collaborator '{name}'", f"multi-party {what}", exc) from None


def _hello_all(names, call, header_factory, remaining, cancel, calls) -> dict[str, bytes]:
    """MP_HELLO to every collaborator (retrying while one is not ready for PSI yet); each
    answers with the public key it receives b under (the key keeper, who makes b: none)."""
    hello = party_node_pb2.PsiMultiparty(collaborators=names)
    step = PsiStep.Value("PSI_STEP_MP_HELLO")
    public: dict[str, bytes] = {}

    def greet(name: str) -> None:
        delay = _RETRY_FIRST_S
        size = 0 if name == names[0] else 32
        while True:
            try:
                frames = call(name, _one(step, b"", header_factory, multiparty=hello), "hello")
                public[name] = _single(
                    frames, PsiStep.Value("PSI_STEP_MP_PUBLIC_KEY"), f"collaborator '{name}'", size
                )
                for frame in frames:
                    raise PsiError(f"collaborator '{name}' sent {frame.step} after its key")
                return
            except PsiError as exc:
                # A collaborator that has not opened its PSI session yet answers UNAVAILABLE.
                code = getattr(exc, "code", None)
                if code != grpc.StatusCode.UNAVAILABLE or remaining() <= delay:
                    raise
                if cancel is not None and cancel.is_set():
                    raise
            time.sleep(delay)
            delay = min(2 * delay, _RETRY_MAX_S)

    _run_all({name: (lambda n=name: greet(n)) for name in names}, calls, cancel)
    return public


def _wrap(names, keeper, public, call, header_factory, finish) -> dict[str, bytes]:
    """b, made by the key keeper, wrapped for each other collaborator's key."""
    others = [name for name in names if name != keeper]
    step = PsiStep.Value("PSI_STEP_MP_WRAP_KEYS")
    frames = call(
        keeper, _one(step, b"".join(public[n] for n in others), header_factory), "key wrapping"
    )
    blob = _single(
        frames,
        PsiStep.Value("PSI_STEP_MP_WRAPPED_KEYS"),
        f"collaborator '{keeper}'",
        WRAPPED_BYTES * len(others),
    )
    finish(frames, keeper)
    return {
        name: blob[i * WRAPPED_BYTES : (i + 1) * WRAPPED_BYTES] for i, name in enumerate(others)
    }
