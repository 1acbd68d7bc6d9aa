"""Errors of the secure projection layer: configuration mistakes and protocol violations."""

from __future__ import annotations

from party_node.errors import ConfigError


class SecureConfigError(ConfigError):
    """The secure task is configured inconsistently; the message says what to change.
    A ConfigError, so the runtime reports it like any other configuration mistake."""


class SecureProtocolError(RuntimeError):
    """A peer's message is malformed, out of order, non-finite or out of the agreed range.

    Raised instead of letting a bad value turn the model into NaNs.
    """
