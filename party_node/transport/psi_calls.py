"""PSI with the other parties, for the peer link (GrpcPeers): the host runs it against its
collaborators, a collaborator serves the host's calls. Which protocol runs is the node's
setting: the PSI engine (spu), the multi-party protocol, or the in-process ECDH."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from heteronn.v1 import common_pb2
from party_node.errors import TaskFailed
from party_node.psi import CollaboratorPsiSession, PsiError, PsiPool, run_host_psi
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.engine_session import EngineCollaboratorSession
from party_node.psi.multiparty_rpc import run_host_multiparty_psi
from party_node.psi.multiparty_session import MultipartyCollaboratorSession
from party_node.runtime.links import Participant
from party_node.transport.node_state import NodeState
from wire.limits import shown
from wire.metrics import Metrics


class PsiCalls:
    """The PSI half of the peer link; GrpcPeers sets these fields."""

    state: NodeState
    stubs: dict[str, Any]
    participants: dict[str, Participant]
    psi_engine: EngineOptions | None
    psi_multiparty: bool
    max_call_s: float
    metrics: Metrics | None

    def _peer_psi_size(self, size: int) -> None:
        """The peers' set sizes PSI revealed (the host: summed over its collaborators)."""
        if self.metrics is not None:
            self.metrics.psi_set_size.labels(task_id=self.state.task_id, which="peer").set(size)

    def _psi_header(self) -> common_pb2.Header:
        return common_pb2.Header(task_id=self.state.task_id, sender=self.state.node_id, kind="psi")

    def _psi_header_check(self, sender: str) -> Callable[[common_pb2.Header], None]:
        """Every PSI message of a call must name this task and the peer called (the caller's
        certificate was checked when the call opened)."""
        task = self.state.task_id

        def check(header: common_pb2.Header) -> None:
            if header.task_id != task or header.sender != sender:
                raise PsiError(
                    f"a PSI message names sender {shown(header.sender)} of task "
                    f"{shown(header.task_id)}; expected '{sender}' of task '{task}'"
                )

        return check

    def _address_host(self, node_id: str) -> str:
        return self.participants[node_id].address.rpartition(":")[0]

    def psi_as_host(self, ids: Sequence[str], round_timeout: float) -> set[str]:
        stubs = {
            p: self.stubs[p] for p, info in self.participants.items() if info.role == "collaborator"
        }
        sizes: dict[str, int] = {}
        try:
            if self.psi_multiparty and len(stubs) >= 2:
                final = run_host_multiparty_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    min(round_timeout, self.max_call_s),
                    cancel=self.state.abort,
                    check_header=self._psi_header_check,
                    peer_sizes=sizes,
                )
                self._peer_psi_size(sum(sizes.values()))
                return final
            if self.psi_engine is not None:
                final = run_host_engine_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    self.psi_engine,
                    min(round_timeout, self.max_call_s),
                    cancel=self.state.abort,
                    peer_hosts={name: self._address_host(name) for name in stubs},
                    peer_sizes=sizes,
                )
                self._peer_psi_size(sum(sizes.values()))
                return final
            with PsiPool() as pool:
                final = run_host_psi(
                    stubs,
                    ids,
                    self._psi_header,
                    pool,
                    min(round_timeout, self.max_call_s),
                    cancel=self.state.abort,
                    peer_sizes=sizes,
                )
        except (PsiError, TimeoutError) as exc:
            raise TaskFailed(self.state.abort.reason or str(exc)) from None
        self._peer_psi_size(sum(sizes.values()))
        return final

    def psi_as_collaborator(self, ids: Sequence[str], timeout: float) -> set[str]:
        host = next(p for p in self.participants.values() if p.role == "host")
        collaborators = [p for p, i in self.participants.items() if i.role == "collaborator"]
        if self.psi_multiparty and len(collaborators) >= 2:
            session = MultipartyCollaboratorSession(
                ids,
                self._psi_header,
                node_id=self.state.node_id,
                task_id=self.state.task_id,
                collaborators=collaborators,
                timeout=timeout,
                peer=f"host '{host.node_id}'",
                check_header=self._psi_header_check(host.node_id),
            )
            return self._serve_psi(session, timeout)
        if self.psi_engine is not None:
            session = EngineCollaboratorSession(
                ids,
                self.psi_engine,
                self._psi_header,
                node_id=self.state.node_id,
                timeout=timeout,
                peer=f"host '{host.node_id}'",
                peer_host=self._address_host(host.node_id),
            )
            return self._serve_psi(session, timeout)
        with PsiPool() as pool:
            session = CollaboratorPsiSession(
                ids, pool, self._psi_header, peer=f"host '{host.node_id}'"
            )
            return self._serve_psi(session, timeout)

    def _serve_psi(
        self,
        session: CollaboratorPsiSession | EngineCollaboratorSession | MultipartyCollaboratorSession,
        timeout: float,
    ) -> set[str]:
        self.state.psi_session = session
        self.state.psi_ready.set()
        try:
            final = session.wait_result(timeout, cancel=self.state.abort)
        except (PsiError, TimeoutError) as exc:
            raise TaskFailed(self.state.abort.reason or str(exc)) from None
        finally:
            session.close()
        self._peer_psi_size(getattr(session, "peer_size", None) or 0)
        return final
