"""The coordinator's error catalogue: each domain error names the gRPC status it maps to.

The state machine raises these with a message a person can act on; the servicer turns
them into `context.abort(code, message)`. Codes are status names (not `grpc.StatusCode`)
so the domain stays free of the transport.
"""

from __future__ import annotations

from wire.status_error import StatusError


class CoordinatorError(StatusError):
    """Base class; `code` is a `grpc.StatusCode` member name."""


class TaskNotFound(CoordinatorError):
    code = "NOT_FOUND"


class NotAParticipant(CoordinatorError):
    code = "PERMISSION_DENIED"


class TaskAlreadyExists(CoordinatorError):
    code = "ALREADY_EXISTS"


class InvalidRequest(CoordinatorError):
    """A malformed spec or join, or one that contradicts what other nodes said."""

    code = "INVALID_ARGUMENT"


class WrongPhase(CoordinatorError):
    """The task is not in a state where this request makes sense (e.g. it already ended)."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(CoordinatorError):
    """The caller's certificate may not make this call (services.authz)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(CoordinatorError):
    """Under mutual TLS the call carries no usable certificate name."""

    code = "UNAUTHENTICATED"


class OverLimit(CoordinatorError):
    """A count over one of the coordinator's limits (tasks kept, open watches)."""

    code = "RESOURCE_EXHAUSTED"
