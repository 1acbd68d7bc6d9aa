"""A network partition between two live parties, made with real packet drops.

The collaborator runs in its own network namespace (a second host); mid-training iptables
silently drops everything between it and the host while both still reach the coordinator.
No RST and no closed socket: the case where a naive system waits forever. Every party must
exit non-zero well before calculation_timeout, saying which peer it lost."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.server import CoordinatorSettings, start_coordinator
from tests import pausing_nodes as task
from tests.harness import Result, wait_all
from tests.netns import Namespace

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


def _cut_mid_training(tmp_path: Path, keep_coordinator: bool) -> dict[str, Result]:
    """Run the task with the collaborator in its own namespace; when it pauses in round 2,
    drop its traffic (all of it, or all but the coordinator's). Every party must have exited
    non-zero within half the calculation_timeout; returns what each said."""
    with Namespace() as ns:
        coordinator = start_coordinator(
            CoordinatorSettings(listen=f"{ns.root_ip}:0", db=":memory:", plaintext=True)
        )
        try:
            task.create_task(coordinator.address)
            listen = {"h": f"{ns.root_ip}:0", "c1": f"{ns.inside_ip}:0"}
            procs = task.start_nodes(tmp_path, coordinator.address, listen, {"c1": ns.prefix})
            task.wait_for_pause(tmp_path, procs)
            ns.drop_all_but([coordinator.port] if keep_coordinator else [])
            cut_at = time.monotonic()
            task.resume(tmp_path)
            results = wait_all(procs, timeout=task.CALCULATION_TIMEOUT + 60)
            elapsed = time.monotonic() - cut_at
        finally:
            coordinator.drain(timeout=5)
            coordinator.stop()
    for name, r in results.items():
        assert r.code != 0, f"{name} finished despite the partition:\n{r.stderr}"
    assert elapsed < task.CALCULATION_TIMEOUT / 2, (
        f"the partition was noticed only after {elapsed:.0f} s"
    )
    return results


def _last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_partition_between_parties_ends_the_task_naming_the_link(tmp_path):
    results = _cut_mid_training(tmp_path, keep_coordinator=True)
    for name, r in results.items():  # the first report wins, and names the broken link
        last = _last_line(r)
        # Whichever party notices first reports it: the host's send that cannot be delivered,
        # or the collaborator's read of the host's stream of gradients that breaks.
        noticed = "cannot deliver" in last or "lost the stream of messages" in last
        assert noticed and "'c1'" in last and "'h'" in last, f"{name}: {last}"
        assert "network" in last, f"{name}: the message does not suggest the network: {last}"


def test_party_cut_off_from_everyone_is_declared_lost(tmp_path):
    """The collaborator loses the coordinator too: the coordinator stops hearing its
    heartbeats and fails the task for the host; the collaborator fails on its own."""
    results = _cut_mid_training(tmp_path, keep_coordinator=False)
    host = _last_line(results["h"])
    assert "node 'c1' stopped sending heartbeats" in host, host
    collaborator = _last_line(results["c1"])
    assert "host 'h'" in collaborator or "coordinator" in collaborator, collaborator
