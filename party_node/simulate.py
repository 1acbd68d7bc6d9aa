"""One call to run a whole task locally — for notebooks and tests: every party in its own
thread of this process, each with its own PartyNode server, an embedded coordinator, real
gRPC on 127.0.0.1. (The seed's two-notebook way, `mock_context`, runs each party in its own
process instead.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from party_node.errors import TaskFailed
from party_node.runtime.watchdog import GRACE_S
from party_node.settings import NodeSettings
from wire.limits import check_id


def run_local(
    host: Any,
    collaborators: Sequence[Any],
    task_id: str = "local-task",
    workdir: str | Path = ".",
) -> dict[str, dict[str, Any]]:
    """Train `host` with `collaborators` to the end. Node ids are the feature keys; outputs
    go to ``<workdir>/<feature_key>/<task_id>/``. Returns each node's report; raises
    TaskFailed with the reason (the failing party's own account when it has one).

    The caller's process is left alone: a party stuck in user code past calculation_timeout
    fails the task but is not interrupted (its thread is abandoned after a grace period)."""
    from party_node.app import run_node, start_embedded_coordinator

    parties = [host, *collaborators]
    nodes = [p.feature_key for p in parties]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"every party needs its own feature_key, got {nodes}")
    for node in [*nodes, task_id]:
        check_id("run_local: a feature_key (the node id) or task_id", node)
    coordinator = start_embedded_coordinator(host, nodes, task_id, ":memory:")
    reports: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    own: list[str] = []  # reasons a party found itself (the broadcast names it)

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
            if exc.reason.startswith(f"{party._role} '{party.feature_key}'"):
                own.append(exc.reason)
        except Exception as exc:  # surfaced below with the party's name
            failures[party.feature_key] = f"{type(exc).__name__}: {exc}"

    threads = [
        threading.Thread(target=run, args=(p,), name=p.feature_key, daemon=True) for p in parties
    ]
    try:
        for t in threads:
            t.start()
        _join(threads, failures)
    finally:
        coordinator.drain(timeout=5.0)
        coordinator.stop(grace=1.0)
    if failures:
        raise TaskFailed(own[0] if own else next(iter(failures.values())))
    return reports


def _join(threads: list[threading.Thread], failures: dict[str, str]) -> None:
    """Wait for every party; once one has failed, give the rest GRACE_S to follow (a party
    stuck in user code never does, and is left behind)."""
    failed_at: float | None = None
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.1)
        if failures and failed_at is None:
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            return
