"""Domain errors of a task. Each message says who, in which phase, and what to do."""

from __future__ import annotations


class TaskFailed(RuntimeError):
    """The task ended in failure; `reason` is the message every party shows."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConfigError(ValueError):
    """The scheduler or node configuration is invalid; nothing was started."""
