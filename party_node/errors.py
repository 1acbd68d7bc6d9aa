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


class NamedKeyError(KeyError):
    """A KeyError whose text the framework wrote from settings (feature keys), never from
    data: unlike other lookup errors, its text may go to every party."""


class BundleError(ConfigError):
    """A model bundle is missing, modified, incomplete, or not the one its peers agreed on;
    the serving node does not start."""


class NodeError(StatusError):
    """A peer's RPC this node refuses; `code` is the gRPC status it maps to, `reason` the
    label it is counted under in metrics (errors by reason)."""

    reason = "error"


class BadMessage(NodeError):
    """The message is malformed: undecodable, inconsistent shapes, non-finite values."""

    code = "INVALID_ARGUMENT"
    reason = "invalid"


class WrongTask(NodeError):
    """The message belongs to another task than the one this node runs."""

    code = "FAILED_PRECONDITION"
    reason = "wrong_task"


class NotConsumed(NodeError):
    """This node's role does not consume this RPC or message kind (e.g. features sent to a
    collaborator); refused before the body is read."""

    code = "FAILED_PRECONDITION"
    reason = "not_consumed"


class NotReady(NodeError):
    """This node cannot take the message yet (it has not joined, or the step is not open);
    the caller may retry."""

    code = "UNAVAILABLE"
    reason = "not_ready"


class NotAllowed(NodeError):
    """The caller is not a participant, or not the one the message claims to come from."""

    code = "PERMISSION_DENIED"
    reason = "not_allowed"


class TooLarge(NodeError):
    """A payload, a queue or a stream count is over its limit."""

    code = "RESOURCE_EXHAUSTED"
    reason = "too_large"


# ---- serving (docs/inference.md) --------------------------------------------------------------


class HookFailed(NodeError):
    """A party's predict_feature raised or returned something unusable. The caller hears
    which party; the details stay in that party's log (they may quote ids)."""

    code = "INTERNAL"
    reason = "hook_failed"


class PeerUnavailable(NodeError):
    """A collaborator's serving node is down or unreachable; the message names it."""

    code = "UNAVAILABLE"
    reason = "collaborator_unavailable"


class PeerTimedOut(NodeError):
    """A collaborator did not answer within the call's deadline; the message names it."""

    code = "DEADLINE_EXCEEDED"
    reason = "collaborator_deadline"


class PeerRefused(NodeError):
    """A collaborator refused the host's call; `code` is what the host's caller gets."""

    reason = "collaborator_refused"

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class DeadlineExpired(NodeError):
    """The call's deadline passed before its prediction was ready."""

    code = "DEADLINE_EXCEEDED"
    reason = "deadline"


class Overloaded(NodeError):
    """Too many calls in flight or ids queued at this node; retry later or slower."""

    code = "RESOURCE_EXHAUSTED"
    reason = "overloaded"


class RateLimited(NodeError):
    """Over a collaborator's cap on ids answered per second."""

    code = "RESOURCE_EXHAUSTED"
    reason = "rate_limited"


class ModelMismatch(NodeError):
    """The caller or a peer serves another model than this node's bundle."""

    code = "FAILED_PRECONDITION"
    reason = "model_mismatch"


class SessionUnknown(NodeError):
    """A SecureEmbed names a secure session this collaborator does not have (it restarted,
    or the session sat idle too long); the host opens a new one."""

    code = "NOT_FOUND"
    reason = "secure_session_unknown"
