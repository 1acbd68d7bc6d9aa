"""`mock_context`: the seed's local simulation. Every party is its own process in one working
directory; real gRPC on loopback; the initiator embeds a coordinator and publishes its address
in a rendezvous folder (``./.heteronn/mock/<task_id>/``). Only the deployment is simulated."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from wire.limits import check_id


@dataclass(frozen=True)
class MockEnvironment:
    node_id: str
    nodes: tuple[str, ...]
    workdir: Path

    def rendezvous(self, task_id: str) -> Path:
        return self.workdir / ".heteronn" / "mock" / task_id


_current: ContextVar[MockEnvironment | None] = ContextVar("heteronn_mock", default=None)


@contextlib.contextmanager
def mock_context(id: str, nodes: list[str]) -> Iterator[MockEnvironment]:
    """Run the enclosed ``scheduler._run(...)`` as node `id` of a local task among `nodes`."""
    if not isinstance(id, str) or not id:
        raise ValueError("mock_context(id=...) needs this node's id as a non-empty string")
    if not nodes or len(set(nodes)) != len(nodes):
        raise ValueError(f"mock_context(nodes=...) needs distinct node ids, got {nodes!r}")
    for node in nodes:
        check_id("mock_context: node id", node)
    if id not in nodes:
        raise ValueError(
            f"mock_context: node id {id!r} is not in nodes={list(nodes)!r}; "
            "add it to the list every party passes"
        )
    env = MockEnvironment(node_id=id, nodes=tuple(nodes), workdir=Path.cwd())
    token = _current.set(env)
    try:
        yield env
    finally:
        _current.reset(token)


def current_mock() -> MockEnvironment | None:
    return _current.get()
