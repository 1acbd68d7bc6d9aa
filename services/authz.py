"""Who may call which coordinator RPC, by the name in the caller's TLS certificate.

Mutual TLS only proves that a caller holds a certificate from the deployment's CA, and every
party node holds one. Without these rules any node could cancel any task or report phases in
another node's name. Rules (under mutual TLS; in plaintext mode everything is allowed):

- CreateTask, CancelTask: only identities listed in the coordinator setting `operators`.
- JoinTask, ReportPhase, Heartbeat, WatchTask naming a node: the certificate must name that
  node (its node_id); operators get no exception, they do not act for nodes.
- GetTask, WatchTask without a node id: operators, or participants of that task.
- ListTasks: operators see every task, anyone else only the tasks it participates in.

A certificate's identities are its CN and its DNS subject alternative names, each accepted
only as its pin allows (wire.peer_auth.Trust, setting tls_pins); the node side applies the
same reading.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import grpc

from services.domain import Task
from services.errors import PermissionDenied, TaskNotFound, Unauthenticated
from wire.limits import shown
from wire.peer_auth import Trust, peer_identities

SETTING_HINT = (
    "the coordinator setting `operators` (HETERONN_COORDINATOR_OPERATORS or "
    "`heteronn coordinator --operators`)"
)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one RPC; `names` is empty in plaintext mode."""

    cn: str
    names: frozenset[str]
    operator: bool
    checked: bool

    @property
    def shown(self) -> str:
        """The name quoted in messages: the CN, else the first SAN."""
        return self.cn or min(self.names, default="")

    def may_read(self, task: Task) -> bool:
        """Operators read every task; a node reads the tasks it participates in."""
        if not self.checked or self.operator:
            return True
        return any(name in self.names for name in task.spec.participants)


class CallerPolicy:
    """Applies the rules above; `enabled` is False when the coordinator runs without TLS.
    Refusals are `PermissionDenied`/`Unauthenticated` errors, which the servicer maps to
    status codes like every other domain error."""

    def __init__(self, operators: Iterable[str], enabled: bool, trust: Trust | None = None):
        self.operators = frozenset(operators)
        self.enabled = enabled
        self.trust = trust

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """Who is calling; Unauthenticated under TLS if the peer presented no name."""
        if not self.enabled:
            return Caller("", frozenset(), operator=True, checked=False)
        if not context.auth_context().get("x509_pem_cert"):
            raise Unauthenticated(
                "the connection carries no client certificate; the coordinator requires mutual "
                "TLS (give the caller --tls-ca, --tls-cert and --tls-key)"
            )
        cn, sans = peer_identities(context, self.trust)
        names = frozenset(n for n in (cn, *sans) if n)
        if not names:
            raise PermissionDenied(
                "the client certificate names no identity its issuer may vouch for (with "
                "several CAs in the bundle every name needs a pin: coordinator setting tls_pins)"
            )
        return Caller(cn, names, operator=bool(names & self.operators), checked=True)

    def require_operator(self, caller: Caller, method: str) -> None:
        """PermissionDenied unless the caller is listed in `operators`."""
        if not caller.operator:
            allowed = ", ".join(sorted(self.operators)) or "none"
            raise _denied(
                method,
                caller,
                f"is not an operator of this coordinator (operators: {allowed}); call with an "
                f"operator's certificate (heteronn task --tls-cert/--tls-key) or add "
                f"'{caller.shown}' to {SETTING_HINT}",
            )

    def require_node(self, caller: Caller, method: str, node_id: str) -> None:
        """PermissionDenied unless the caller's certificate names `node_id`."""
        if caller.checked and node_id not in caller.names:
            raise _denied(
                method,
                caller,
                f"may not act as node {shown(node_id)}; a node calls the coordinator with its "
                f"own certificate, whose CN is its node_id (set node_id = '{caller.shown}' or "
                f"use the certificate issued to that node)",
            )

    def require_reader(
        self, caller: Caller, method: str, task_id: str, find: Callable[[str], Task | None]
    ) -> Task:
        """The task, if the caller may read it. An operator learns that a task does not
        exist (TaskNotFound); anyone else gets the same PermissionDenied for a task that
        does not exist as for one it does not take part in, so ids cannot be probed."""
        task = find(task_id)
        if task is not None and caller.may_read(task):
            return task
        if task is None and (caller.operator or not caller.checked):
            raise TaskNotFound(f"task {shown(task_id)} is not known to this coordinator; "
                               "check the task id (heteronn task list)")
        raise _denied(
            method,
            caller,
            f"is neither an operator nor a participant of task {shown(task_id)}; operators "
            f"are listed in {SETTING_HINT}",
        )


def _denied(method: str, caller: Caller, problem: str) -> PermissionDenied:
    """PERMISSION_DENIED, naming the method and the certificate."""
    return PermissionDenied(f"{method}: certificate '{caller.shown}' {problem}")


def open_policy() -> CallerPolicy:
    """Plaintext mode: no certificates, no checks (local demos and tests)."""
    return CallerPolicy((), enabled=False)


def visible(caller: Caller, tasks: Collection[Task]) -> list[Task]:
    """The tasks `caller` may see in a listing."""
    return [t for t in tasks if caller.may_read(t)]
