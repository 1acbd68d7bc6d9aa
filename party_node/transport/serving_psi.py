"""Batch prediction's private set intersection at a collaborator's serving node: the host's
Psi calls (PartyNodeService.Psi, the same RPC and PSI package as training) open one session
per batch id; its result is the set of ids the host may then ask embeddings for. Sessions
are bounded in number and forgotten after `batch_idle_s` without a call."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from heteronn.v1 import common_pb2, party_node_pb2_grpc
from party_node.errors import BadMessage, NodeError, NotReady, Overloaded, WrongTask
from party_node.psi import CollaboratorPsiSession, PsiError, PsiPool
from party_node.runtime.task import _check_ids
from party_node.serving.audit import AuditLog
from party_node.serving.limits import ServingLimits
from party_node.transport.serving_handler import PeerCallHandler
from wire.peer_auth import Trust, tls_identities
from wire.status_error import abort_with


@dataclass
class _Batch:
    session: CollaboratorPsiSession
    used: float = field(default_factory=time.monotonic)
    result: frozenset[str] | None = None


class BatchSessions:
    """The batch predictions open at this collaborator, by batch id."""

    def __init__(
        self,
        node_id: str,
        host_id: str,
        load_ids: Callable[[], Sequence[str]],
        limits: ServingLimits,
        audit: AuditLog,
        model_id: str,
    ) -> None:
        self.node_id, self.host_id = node_id, host_id
        self.load_ids = load_ids
        self.limits = limits
        self.audit = audit
        self.model_id = model_id
        self._batches: dict[str, _Batch] = {}
        self._lock = threading.Lock()
        self._pool: PsiPool | None = None

    def _expire(self) -> None:
        now = time.monotonic()
        for batch_id, batch in list(self._batches.items()):
            if now - batch.used > self.limits.batch_idle_s:
                batch.session.close()
                del self._batches[batch_id]

    def open(self, batch_id: str) -> CollaboratorPsiSession:
        """The PSI session of `batch_id`, started (with load_local_ids) on its first call."""
        with self._lock:
            self._expire()
            batch = self._batches.get(batch_id)
            if batch is None:
                if len(self._batches) >= self.limits.max_open_batches:
                    raise Overloaded(
                        f"collaborator '{self.node_id}' has {len(self._batches)} batch predictions "
                        f"open (limit max_open_batches); finish one or wait "
                        f"{self.limits.batch_idle_s:g} s"
                    )
                if self._pool is None:
                    self._pool = PsiPool()
                ids = _check_ids(self.load_ids())

                def header() -> common_pb2.Header:
                    return common_pb2.Header(task_id=batch_id, sender=self.node_id, kind="psi")

                def check(h: common_pb2.Header) -> None:
                    if h.task_id != batch_id or h.sender != self.host_id:
                        raise PsiError(f"a PSI chunk of batch '{batch_id}' carries another header")

                session = CollaboratorPsiSession(
                    ids, self._pool, header, peer=f"host '{self.host_id}'", check_header=check
                )
                batch = self._batches[batch_id] = _Batch(session)
            batch.used = time.monotonic()
            return batch.session

    def intersection(self, batch_id: str) -> frozenset[str]:
        """The ids of `batch_id`'s finished PSI; WrongTask/NotReady otherwise."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                raise WrongTask(
                    f"collaborator '{self.node_id}' has no batch prediction '{batch_id}' (never "
                    "started, or idle too long); run its PSI first"
                )
            batch.used = time.monotonic()
            if batch.result is not None:
                return batch.result
        try:
            result = frozenset(batch.session.wait_result(0.2))
        except TimeoutError:
            raise NotReady(f"the PSI of batch '{batch_id}' has not finished") from None
        except PsiError as exc:
            raise WrongTask(f"the PSI of batch '{batch_id}' failed: {exc}") from None
        with self._lock:
            if batch.result is None:
                batch.result = result
                self.audit.record(
                    self.host_id, "Psi", sorted(result), len(result), batch_id, "", self.model_id
                )
        return result

    def close(self) -> None:
        with self._lock:
            for batch in self._batches.values():
                batch.session.close()
            self._batches.clear()
            if self._pool is not None:
                self._pool.close()


class ServingPsiServicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    """PartyNodeService on a collaborator's serving node: only Psi, only from the host."""

    def __init__(
        self, handler: PeerCallHandler, sessions: BatchSessions, trust: Trust | None = None
    ) -> None:
        self.handler = handler
        self.sessions = sessions
        self.trust = trust

    def Psi(self, request_iterator, context) -> Iterator[object]:
        messages = iter(request_iterator)
        first = next(messages, None)
        try:
            if first is None:
                raise BadMessage("Psi: the call carried no message")
            header = first.header
            names = frozenset(tls_identities(context, self.trust))
            self.handler.check_caller(header.sender, names, "Psi")
            session = self.sessions.open(self.handler.check_batch_id(header.task_id))
        except NodeError as err:
            abort_with(context, err)
        yield from session.handle(itertools.chain([first], messages), context)


def host_batch_psi(
    stubs: dict[str, Any], ids: Sequence[str], batch_id: str, host_id: str, timeout: float
) -> set[str]:
    """The host's side: PSI of `ids` with every collaborator's serving node (their
    PartyNodeService stubs, by node id); the ids all of them hold."""
    from party_node.errors import TaskFailed
    from party_node.psi import run_host_psi

    def header() -> common_pb2.Header:
        return common_pb2.Header(task_id=batch_id, sender=host_id, kind="psi")

    try:
        with PsiPool() as pool:
            return run_host_psi(stubs, ids, header, pool, timeout)
    except (PsiError, TimeoutError) as exc:
        raise TaskFailed(f"the PSI of batch '{batch_id}' failed: {exc}") from None
