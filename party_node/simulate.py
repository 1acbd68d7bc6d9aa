"""One call to run a whole task locally — for notebooks and tests: every party in its own
thread of this process, each with its own PartyNode server, an embedded coordinator, real
gRPC on 127.0.0.1. (The seed's two-notebook way, `mock_context`, runs each party in its own
process instead.)"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from party_node.errors import TaskFailed
from party_node.settings import NodeSettings


def run_local(
    host: Any,
    collaborators: Sequence[Any],
    task_id: str = "local-task",
    workdir: str | Path = ".",
) -> dict[str, dict[str, Any]]:
    """Train `host` with `collaborators` to the end. Node ids are the feature keys; outputs
    go to ``<workdir>/<feature_key>/<task_id>/``. Returns each node's report; raises
    TaskFailed with the first failure's reason."""
    from party_node.app import run_node, start_embedded_coordinator

    parties = [host, *collaborators]
    nodes = [p.feature_key for p in parties]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"every party needs its own feature_key, got {nodes}")
    coordinator = start_embedded_coordinator(host, nodes, task_id, ":memory:")
    reports: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}

    def run(party: Any) -> None:
        settings = NodeSettings(
            node_id=party.feature_key,
            task_id=task_id,
            coordinator=coordinator.address,
            listen="127.0.0.1:0",
            workdir=Path(workdir),
            tls_plaintext=True,
        )
        try:
            reports[party.feature_key] = run_node(party, settings)
        except TaskFailed as exc:
            failures[party.feature_key] = exc.reason
        except Exception as exc:  # surfaced below with the party's name
            failures[party.feature_key] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(p,), name=p.feature_key) for p in parties]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        coordinator.drain(timeout=5.0)
        coordinator.stop(grace=1.0)
    if failures:
        raise TaskFailed(next(iter(failures.values())))
    return reports
