"""A collaborator's multi-party PSI: the session a node's servicer delegates `Psi` to when
the task runs psi_engine "multiparty" with two or more collaborators. The host's side and
the framing are in `multiparty_rpc.py`.

Every step is checked before any work is done on it: it must come from the task's host (the
node has checked the caller's certificate; each message's header is checked here too), be a
step of this party's role (key keeper, tagger or neither), come in the protocol's order and
only once, and carry whole points in the counts this party accepts: the host's ids under
`MAX_IDS`, at most this party's own size where the protocol guarantees it (the common
points), fixed sizes for keys."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from party_node.psi.frames import PsiError, PsiFrame
from party_node.psi.multiparty import (
    MultipartyCollaborator,
    Roles,
    key_pair,
    shared_key,
    unwrap_shared_key,
    wrap_shared_key,
)
from party_node.psi.multiparty_rpc import (
    WRAPPED_BYTES,
    HeaderCheck,
    HeaderFactory,
    PsiMessage,
    PsiResponse,
    PsiStep,
    _single,
    frames_from,
    messages_of,
    read_all,
    read_step,
    step_name,
    wrap_context,
)
from party_node.psi.result_keys import accept_keys
from party_node.psi.rpc import SessionState

_STEP = PsiStep.Value


class MultipartyCollaboratorSession(SessionState):
    """One collaborator's multi-party PSI for one task. The node's servicer calls `handle`
    for each Psi call from the host; the task runtime blocks in `wait_result`. Hashing and
    shuffling this party's ids starts at construction."""

    def __init__(
        self,
        ids: Sequence[str],
        header_factory: HeaderFactory,
        *,
        node_id: str,
        task_id: str,
        collaborators: Sequence[str],
        timeout: float,
        peer: str = "host",
        check_header: HeaderCheck | None = None,
    ) -> None:
        if isinstance(ids, str | bytes):
            raise TypeError("ids must be a sequence of str, not a single string")
        # waiting -> greeted -> [wrapped] -> blinded -> [tagged -> tagging] -> exchanged
        # -> accepting -> done, or failed
        super().__init__(peer)
        self._node_id = node_id
        self._task_id = task_id
        self._collaborators = set(collaborators)
        self._timeout = timeout
        self._header = header_factory
        self._check = check_header
        self._ids = ids
        self._protocol: futures.Future[MultipartyCollaborator] = futures.Future()
        self._order: list[str] = []
        self._secret: X25519PrivateKey | None = None  # to receive b under
        self._shared: bytes | None = None
        threading.Thread(target=self._prepare, name="psi-mp-hash", daemon=True).start()

    def _prepare(self) -> None:
        try:
            self._protocol.set_result(MultipartyCollaborator(self._ids))
        except BaseException as exc:
            self._protocol.set_exception(exc)

    @property
    def size(self) -> int:
        return len(self._ids)

    def _serve(
        self, messages: Iterator[PsiMessage], context: grpc.ServicerContext | None
    ) -> Iterator[PsiMessage]:
        first = next(messages, None)
        if first is None:
            raise PsiError(f"the {self.peer} opened a PSI call and sent nothing")
        if self._check is not None:
            self._check(first.header)
        if first.step == _STEP("PSI_STEP_RESULT_KEYS"):
            self._advance("exchanged", "accepting", "the PSI result before its part was done")
            self._done(accept_keys(first, messages, self._ids, self.peer, self._check))
            return
        steps = {
            _STEP("PSI_STEP_MP_HELLO"): self._hello,
            _STEP("PSI_STEP_MP_WRAP_KEYS"): self._wrap,
            _STEP("PSI_STEP_MP_SHARED_KEY"): self._blinded,
            _STEP("PSI_STEP_MP_HOST_IDS"): self._tag_host_ids,
            _STEP("PSI_STEP_MP_COMMON"): self._tag_common,
        }
        serve = steps.get(first.step)
        if serve is None:
            raise PsiError(
                f"the {self.peer} opened a PSI call with step {step_name(first.step)}; this "
                "party runs the multi-party PSI (set psi_engine the same on every party)"
            )
        frames = frames_from(messages, self._check)
        yield from serve(first, _chain(frame_of(first), frames))

    # ---- the steps ------------------------------------------------------------------------------
    def _hello(self, first: PsiMessage, frames: Iterator[PsiFrame]) -> Iterator[PsiMessage]:
        self._advance("waiting", "greeted", "a second multi-party PSI for this task")
        order = list(first.multiparty.collaborators)
        if len(order) != len(set(order)) or set(order) != self._collaborators:
            raise PsiError(
                f"the {self.peer} named collaborators {sorted(set(order))[:10]} for the "
                f"multi-party PSI; this task's are {sorted(self._collaborators)}"
            )
        _single(frames, _STEP("PSI_STEP_MP_HELLO"), f"the {self.peer}", 0)
        self._order = order
        if self._role() == "key keeper":  # it makes b
            self._shared = shared_key()
            public = b""
        else:
            self._secret, public = key_pair()
        yield PsiResponse(
            header=self._header(), step=_STEP("PSI_STEP_MP_PUBLIC_KEY"), data=public, last=True
        )

    def _wrap(self, first: PsiMessage, frames: Iterator[PsiFrame]) -> Iterator[PsiMessage]:
        self._require_role("key keeper", "MP_WRAP_KEYS")
        self._advance("greeted", "wrapped", "the keys to wrap out of order")
        others = self._order[1:]
        data = _single(frames, _STEP("PSI_STEP_MP_WRAP_KEYS"), f"the {self.peer}", 32 * len(others))
        shared = self._shared
        assert shared is not None
        blobs = b"".join(
            wrap_shared_key(shared, data[32 * i : 32 * (i + 1)], wrap_context(self._task_id, n))
            for i, n in enumerate(others)
        )
        yield PsiResponse(
            header=self._header(), step=_STEP("PSI_STEP_MP_WRAPPED_KEYS"), data=blobs, last=True
        )

    def _blinded(self, first: PsiMessage, frames: Iterator[PsiFrame]) -> Iterator[PsiMessage]:
        role = self._role()
        self._advance(
            "wrapped" if role == "key keeper" else "greeted",
            "blinded",
            "its shared key out of order",
        )
        size = 0 if role == "key keeper" else WRAPPED_BYTES
        blob = _single(frames, _STEP("PSI_STEP_MP_SHARED_KEY"), f"the {self.peer}", size)
        if self._secret is not None:
            context = wrap_context(self._task_id, self._node_id)
            self._shared = unwrap_shared_key(blob, self._secret, context)
        assert self._shared is not None
        protocol = self._protocol.result(self._timeout)
        protocol.set_shared_key(self._shared)
        if role == "tagger":
            protocol.make_tagger()
        yield from messages_of(
            _STEP("PSI_STEP_MP_BLINDED"), protocol.blinded_ids(), self._header, PsiResponse
        )
        if role != "tagger":  # its part is done (the host reads the call to its end first)
            self._advance("blinded", "exchanged", "")

    def _tag_host_ids(self, first: PsiMessage, frames: Iterator[PsiFrame]) -> Iterator[PsiMessage]:
        self._require_role("tagger", "MP_HOST_IDS")
        self._advance("blinded", "tagged", "the host's ids out of order")
        protocol = self._protocol.result(self._timeout)
        step = _STEP("PSI_STEP_MP_TAGGED_IDS")
        reader = read_step(frames, _STEP("PSI_STEP_MP_HOST_IDS"), f"the {self.peer}")
        announced = False
        for chunk in reader:  # answered chunk by chunk, in the order received
            total = 0 if announced else reader.total or 0
            announced = True
            yield PsiResponse(
                header=self._header(), step=step, data=protocol.tag_host_ids(chunk), total=total
            )
        yield PsiResponse(header=self._header(), step=step, last=True)

    def _tag_common(self, first: PsiMessage, frames: Iterator[PsiFrame]) -> Iterator[PsiMessage]:
        self._require_role("tagger", "MP_COMMON")
        self._advance("tagged", "tagging", "the common points out of order")
        data = read_all(
            frames,
            _STEP("PSI_STEP_MP_COMMON"),
            f"the {self.peer}",
            most=self.size,
            why="(they are common to every collaborator, this one included)",
        )
        protocol = self._protocol.result(self._timeout)
        yield from messages_of(
            _STEP("PSI_STEP_MP_TAGGED_COMMON"),
            protocol.tag_common(data),
            self._header,
            PsiResponse,
        )
        self._advance("tagging", "exchanged", "")

    # ---- helpers --------------------------------------------------------------------------------
    def _role(self) -> str:
        if not self._order:
            return "member"
        roles = Roles.of(self._order)
        if self._node_id == roles.keeper:
            return "key keeper"
        return "tagger" if self._node_id == roles.tagger else "member"

    def _require_role(self, role: str, step: str) -> None:
        if not self._order:
            raise PsiError(f"the {self.peer} sent {step} before MP_HELLO (PSI is {self._state})")
        if self._role() != role:
            raise PsiError(
                f"the {self.peer} sent {step}, a step of the {role}; this collaborator is "
                f"{'a member' if self._role() == 'member' else 'the ' + self._role()} of the "
                "multi-party PSI"
            )


def frame_of(message: PsiMessage) -> PsiFrame:
    return PsiFrame(step_name(message.step), message.data, message.total, message.last)


def _chain(first: PsiFrame, rest: Iterator[PsiFrame]) -> Iterator[PsiFrame]:
    return itertools.chain([first], rest)
