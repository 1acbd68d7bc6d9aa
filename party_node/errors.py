"""The node's error catalogue.

Two families. `TaskFailed` and `ConfigError` end a task: the runtime reports their message to
the coordinator, which broadcasts it, so every party stops with the same reason. `NodeError`
and its subclasses refuse one RPC from a peer: each names the gRPC status it maps to (as a
`grpc.StatusCode` member name, so nothing below the transport imports grpc), and the
transport turns it into `context.abort(code, message)`. Every message says who, what and how
to fix it.
"""

from __future__ import annotations

from wire.status_error import StatusError


class TaskFailed(RuntimeError):
    """The task ended in failure; `reason` is the message every party shows."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConfigError(ValueError):
    """The scheduler or node configuration is invalid; nothing was started."""


class NodeError(StatusError):
    """A peer's RPC this node refuses; `code` is the gRPC status it maps to."""


class BadMessage(NodeError):
    """The message is malformed: undecodable, inconsistent shapes, non-finite values."""

    code = "INVALID_ARGUMENT"


class WrongTask(NodeError):
    """The message belongs to another task than the one this node runs."""

    code = "FAILED_PRECONDITION"


class NotConsumed(NodeError):
    """This node's role does not consume this RPC or message kind (e.g. features sent to a
    collaborator); refused before the body is read."""

    code = "FAILED_PRECONDITION"


class NotReady(NodeError):
    """This node cannot take the message yet (it has not joined, or the step is not open);
    the caller may retry."""

    code = "UNAVAILABLE"


class NotAllowed(NodeError):
    """The caller is not a participant, or not the one the message claims to come from."""

    code = "PERMISSION_DENIED"


class TooLarge(NodeError):
    """A payload, a queue or a stream count is over its limit."""

    code = "RESOURCE_EXHAUSTED"
