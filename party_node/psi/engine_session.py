"""A collaborator's PSI through the engine: the session a node's servicer delegates `Psi`
to (LINK_OFFER -> LINK_ACCEPT, its worker, ENGINE_DONE; then RESULT_KEYS with several
collaborators). The host's side is `engine_rpc.py`."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent import futures

import grpc

from heteronn.v1 import party_node_pb2
from party_node.psi.engine import EngineRun, LinkEnd, RunSpec
from party_node.psi.engine_files import EngineInput
from party_node.psi.engine_rpc import (
    ENGINES,
    EngineOptions,
    HeaderCheck,
    HeaderFactory,
    PsiLink,
    PsiMessage,
    PsiResponse,
    PsiStep,
    _check_address,
    _check_link,
    _folder_name,
)
from party_node.psi.frames import MAX_IDS, PsiError
from party_node.psi.result_keys import accept_keys
from party_node.psi.rpc import PsiCancelled, SessionState


class EngineCollaboratorSession(SessionState):
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
        super().__init__(peer)  # waiting -> running -> exchanged -> done | failed
        self._ids = ids
        self.options = options
        self._node_id = node_id
        self._timeout = timeout
        self._header = header_factory
        self._check = check_header
        self._peer_host = peer_host
        #: The host's set size, once its offer has arrived (PSI reveals it anyway).
        self.peer_size: int | None = None
        self._stop = threading.Event()
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
                    engine=self.options.engine,
                    address=advertise,
                    certificate=run.certificate,
                    finished=link.recover and run.finished,
                ),
            )
            if not 0 <= offer.total <= MAX_IDS:
                raise PsiError(f"the {self.peer} announced {offer.total} ids, out of range")
            self.peer_size = offer.total
            empty = offer.total == 0 or source.count == 0  # no engine run: nothing in common
            reuse = link.recover and run.plan_recovery(link.finished)
            if not (empty or reuse):
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

            if empty or reuse:
                result = {"intersection": 0}
            else:
                result = run.wait(self._timeout, check=stopped)
            if not link.broadcast:  # before ENGINE_DONE: the host sends the keys right after
                self._advance("running", "exchanged", "")
            # ENGINE_DONE as soon as the worker ends; reading the rows (seconds at 10M ids)
            # must not hold up the host, which bounds its wait for this message.
            total = result.get("intersection", 0) if link.broadcast else 0
            yield PsiResponse(
                header=self._header(), step=party_node_pb2.PSI_STEP_ENGINE_DONE, total=total
            )
            if link.broadcast:
                rows = [] if empty else run.rows()  # a reused run kept its output
                self._done({self._ids[int(row)] for row in rows})
        finally:
            run.close()

    def _accept_keys(self, first: PsiMessage, messages: Iterator[PsiMessage]) -> None:
        self._advance("exchanged", "accepting", "the PSI result before finishing the engine run")
        self._done(accept_keys(first, messages, self._ids, self.peer, self._check))

    def _stopped(self) -> None:
        self._stop.set()
