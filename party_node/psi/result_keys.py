"""RESULT_KEYS: the host tells a collaborator the final intersection as 16-byte keys of the
ids (`engine_files.id_key`), which the collaborator maps to its own ids; every key must be
one of them. Used when the host alone learns the result of the matching (several
collaborators, through the engine or the multi-party protocol)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.psi.engine_files import id_key
from party_node.psi.frames import PsiError

KEY_BYTES = 16
#: About 1 MB of keys per RESULT_KEYS chunk.
CHUNK_KEYS = 1 << 16

PsiMessage = party_node_pb2.PsiRequest | party_node_pb2.PsiResponse
HeaderFactory = Callable[[], common_pb2.Header]
HeaderCheck = Callable[[common_pb2.Header], None]


def keys_of(ids: Iterable[str]) -> bytes:
    """The keys of `ids`, concatenated in sorted order (the order says nothing)."""
    return b"".join(sorted(bytes.fromhex(id_key(item)) for item in ids))


def deliver_keys(
    stub: party_node_pb2_grpc.PartyNodeServiceStub,
    name: str,
    keys: bytes,
    header_factory: HeaderFactory,
    timeout: float,
    rpc_error: Callable[[str, str, grpc.RpcError], Exception],
) -> None:
    """One Psi call carrying the keys to collaborator `name`; it answers with nothing."""
    count = len(keys) // KEY_BYTES
    cut = CHUNK_KEYS * KEY_BYTES

    def messages() -> Iterator[party_node_pb2.PsiRequest]:
        starts = range(0, max(len(keys), 1), cut)
        for index, start in enumerate(starts):
            yield party_node_pb2.PsiRequest(
                header=header_factory(),
                step=party_node_pb2.PSI_STEP_RESULT_KEYS,
                data=keys[start : start + cut],
                total=count if index == 0 else 0,
                last=start + cut >= len(keys),
            )

    try:
        for _ in stub.Psi(messages(), timeout=timeout, wait_for_ready=True):
            raise PsiError(f"collaborator '{name}' answered the PSI result with data")
    except grpc.RpcError as exc:
        raise rpc_error(f"collaborator '{name}'", "result delivery", exc) from None


def accept_keys(
    first: PsiMessage,
    messages: Iterator[PsiMessage],
    ids: Sequence[str],
    peer: str,
    check_header: HeaderCheck | None = None,
) -> set[str]:
    """Read a RESULT_KEYS call (its first message already taken) and map the keys to `ids`;
    PsiError when the host announces or sends more keys than this party has ids, repeats
    one, or sends one that is none of them."""
    total = first.total
    if not 0 <= total <= len(ids):
        raise PsiError(f"the {peer} announced {total} result keys; this party has {len(ids)} ids")
    wanted: set[bytes] = set()
    message = first
    while True:
        if message.step != party_node_pb2.PSI_STEP_RESULT_KEYS or len(message.data) % KEY_BYTES:
            raise PsiError(f"the {peer} sent a malformed RESULT_KEYS chunk")
        data = message.data
        wanted.update(data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES))
        if len(wanted) > total:
            raise PsiError(f"the {peer} sent more result keys than it announced")
        if message.last:
            break
        message = next(messages, None)
        if message is None:
            raise PsiError(f"the {peer}'s result ended before its last chunk")
        if check_header is not None:
            check_header(message.header)
    if len(wanted) != total:
        raise PsiError(f"the {peer} sent {len(wanted)} distinct result keys of {total}")
    result = {item for item in ids if bytes.fromhex(id_key(item)) in wanted}
    if len(result) != total:
        raise PsiError(
            f"the {peer} sent {total - len(result)} result keys that are none of this party's ids"
        )
    return result
