"""A collaborator's PSI through the engine: the session a node's servicer delegates `Psi`
to (LINK_OFFER -> LINK_ACCEPT, its worker, ENGINE_DONE; then RESULT_KEYS with several
collaborators). The host's side is `engine_rpc.py`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures

import grpc

from heteronn.v1 import party_node_pb2
from party_node.psi.engine import EngineRun, LinkEnd, ResumeFailed, RunSpec
from party_node.psi.engine_files import EngineInput
from party_node.psi.engine_rpc import (
    ENGINES,
    RESTART_WAIT_S,
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
    log_restart,
)
from party_node.psi.frames import MAX_IDS, PsiError
from party_node.psi.result_keys import accept_keys
from party_node.psi.rpc import PsiCancelled, SessionState


class _HostLeft(PsiError):
    """The host ended the Psi call while this party's worker ran."""


class EngineCollaboratorSession(SessionState):
    """A collaborator's PSI for one task through the engine. The node's servicer calls
    `handle` for each Psi call from the host; the task runtime blocks in `wait_result`.
    The input file is written from construction on, so it is ready when the host calls.

    A recovered run that fails (spu at either end: this worker's ResumeFailed, or the host
    ending the call) leaves the session `restartable` for RESTART_WAIT_S: the host's one
    offer with `PsiLink.restart` then runs the PSI afresh; no offer in time fails the PSI."""

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
        super().__init__(peer)  # waiting -> running (-> restartable -> running) -> done | failed
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
        self._recovering = False  # the host's offer asked to resume an interrupted run
        self._restarted = False
        self._restart_offered = False  # one restart offer per task, even while it waits
        #: The call whose recovered run failed: its end must not fail the restarted run.
        self._failed_call: object | None = None
        self._failed_here = False  # this party's resumed worker failed (not the host's)
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
        link = _check_link(
            offer, party_node_pb2.PSI_STEP_LINK_OFFER, self.options.engine, self.peer
        )
        if link.restart:
            self._accept_restart(link.recover)
        else:
            self._advance("waiting", "running", "a second PSI engine run for this task")
            self._recovering = link.recover
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
        failure: PsiError | None = None
        try:
            listen, advertise = self.options.bind()
            try:
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
            except GeneratorExit:  # the host ended the call: its resumed run may have failed
                if link.recover and not self._restarted:
                    failure = _HostLeft(f"the {self.peer} ended the PSI call")
                raise
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
            if empty or reuse:
                result: dict = {"intersection": 0}
            else:
                result, failure = self._wait_run(run, link.recover, context)
            if failure is None:
                if not link.broadcast:  # before ENGINE_DONE: the host sends the keys next
                    self._advance("running", "exchanged", "")
                # ENGINE_DONE as soon as the worker ends; reading the rows (seconds at 10M
                # ids) must not hold up the host, which bounds its wait for this message.
                total = result.get("intersection", 0) if link.broadcast else 0
                yield PsiResponse(
                    header=self._header(), step=party_node_pb2.PSI_STEP_ENGINE_DONE, total=total
                )
                if link.broadcast:
                    rows = [] if empty else run.rows()  # a reused run kept its output
                    self._done({self._ids[int(row)] for row in rows})
        finally:
            run.close()  # its worker has ended: a restarted one may take its port
            if failure is not None:
                self._await_restart(failure, context)
        if isinstance(failure, ResumeFailed):  # the host's worker may still be running
            yield PsiResponse(
                header=self._header(), step=party_node_pb2.PSI_STEP_ENGINE_RESUME_FAILED
            )

    def _wait_run(
        self, run: EngineRun, recover: bool, context: grpc.ServicerContext | None
    ) -> tuple[dict, PsiError | None]:
        """The worker's result; the failure of a recovered run (that the host restarts
        afresh) is returned, any other raised."""

        def stopped() -> None:
            if self._stop.is_set():
                raise PsiCancelled("PSI cancelled: the task is stopping")
            if context is not None and not context.is_active():
                raise _HostLeft(f"the {self.peer} cancelled the PSI call")

        try:
            return run.wait(self._timeout, check=stopped), None
        except (ResumeFailed, _HostLeft) as exc:
            if not recover or self._restarted:
                raise
            return {}, exc

    def _await_restart(self, failure: PsiError, context: object) -> None:
        """running -> restartable; PSI fails with `failure` unless the host restarts the
        run within RESTART_WAIT_S."""
        with self._lock:
            if self._state != "running":  # failed or closed meanwhile
                return
            self._state = "restartable"
            self._failed_here = isinstance(failure, ResumeFailed)
            self._failed_call = context

        def give_up() -> None:
            with self._lock:
                if self._state != "restartable":
                    return
                self._state = "running"  # so that _fail fails it
            self._fail(f"{failure}; the {self.peer} did not restart the PSI engine run")

        timer = threading.Timer(RESTART_WAIT_S, give_up)
        timer.daemon = True
        timer.start()

    def _accept_restart(self, recover: bool) -> None:
        """The host's restart offer: once, after this party's recovered run failed (waits
        for that run's worker to end if the offer came first), and afresh."""
        with self._lock:
            allowed = self._recovering and not (recover or self._restart_offered)
            self._restart_offered = True
        if not allowed:
            raise PsiError(f"the {self.peer} asked to restart a PSI engine run it may not restart")
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            with self._lock:
                if self._state == "restartable":
                    self._state, self._restarted = "running", True
                    break
                if self._state != "running" or time.monotonic() > deadline:
                    raise PsiError(
                        f"the {self.peer} restarted the PSI engine run, but no resumed run "
                        f"failed here (PSI is {self._state})"
                    )
            time.sleep(0.05)
        log_restart("this party" if self._failed_here else "the host")

    def _handed_off(self, context: grpc.ServicerContext | None) -> bool:
        return context is not None and context is self._failed_call

    def _accept_keys(self, first: PsiMessage, messages: Iterator[PsiMessage]) -> None:
        self._advance("exchanged", "accepting", "the PSI result before finishing the engine run")
        self._done(accept_keys(first, messages, self._ids, self.peer, self._check))

    def _stopped(self) -> None:
        self._stop.set()
