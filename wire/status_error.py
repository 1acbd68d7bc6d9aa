"""Errors that end one RPC with a status code, and the servicer side of that mapping.

Both services keep a catalogue of domain errors (`party_node/errors.py`,
`services/errors.py`), each naming the gRPC status it maps to as a `grpc.StatusCode` member
name, so the code raising them never imports grpc. Servicers run their handlers through
`status_call`, which turns such an error into `context.abort(code, message)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from wire.limits import one_line

if TYPE_CHECKING:
    import grpc

T = TypeVar("T")


class StatusError(Exception):
    """Base of every catalogued error; `code` is a `grpc.StatusCode` member name."""

    code = "UNKNOWN"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def abort_with(context: grpc.ServicerContext, err: StatusError) -> NoReturn:
    """End the call with the error's status and message."""
    import grpc

    context.abort(grpc.StatusCode[err.code], err.message)
    raise AssertionError("unreachable")  # context.abort raises


def status_call(context: grpc.ServicerContext, fn: Callable[[], T], log: logging.Logger) -> T:
    """fn(), with a StatusError logged (control characters escaped: messages quote what
    callers sent) and turned into the call's status."""
    try:
        return fn()
    except StatusError as err:
        log.info("%s: %s", err.code, one_line(err.message))
        abort_with(context, err)
