"""The heteronn coordinator: task registry, phase/round state machine, deadlines and failure
broadcast, persisted in SQLite so a restarted coordinator resumes its tasks.

`services.server` is imported lazily so the state machine can be used without gRPC.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CoordinatorSettings", "RunningCoordinator", "main", "start_coordinator"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from services import server

        return getattr(server, name)
    raise AttributeError(f"module 'services' has no attribute {name!r}")
