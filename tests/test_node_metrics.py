"""The node's own metrics that used to stay unset (issue 9, item 10): `heteronn_peers_connected`
follows the peer channels, `heteronn_psi_set_size{which="peer"}` is the other side's set size
PSI revealed, and `heteronn_failures_total` counts a node's own errors. Real PSI between a
host and a collaborator transport (GrpcPeers) over two real node servers on 127.0.0.1."""

from __future__ import annotations

import threading

from party_node.runtime.links import Participant
from party_node.transport.monitoring import NodeObserver
from party_node.transport.peers import GrpcPeers
from tests import node_rig as rig


def _value(node: rig.Rig, name: str, **labels: str) -> float | None:
    return node.metrics.registry.get_sample_value(name, labels)


def test_peers_connected_and_psi_peer_sizes() -> None:
    host, collaborator = rig.start("h", psi_wait_s=30), rig.start("c1", psi_wait_s=30)
    people = (
        Participant("h", "host", "fk-h", host.address),
        Participant("c1", "collaborator", "fk-c1", collaborator.address),
    )
    peers = {
        name: GrpcPeers(node.state, role, None, send_timeout=30, metrics=node.metrics)
        for name, node, role in (("h", host, "host"), ("c1", collaborator, "collaborator"))
    }
    try:
        for p in peers.values():
            p.connect(people)
        assert _value(host, "heteronn_peers_connected") == 1
        assert _value(collaborator, "heteronn_peers_connected") == 1
        host_ids = [f"id-{i}" for i in range(0, 300)]
        collaborator_ids = [f"id-{i}" for i in range(200, 700)]
        found: dict[str, set[str]] = {}
        thread = threading.Thread(
            target=lambda: found.update(c1=peers["c1"].psi_as_collaborator(collaborator_ids, 60))
        )
        thread.start()
        found["h"] = peers["h"].psi_as_host(host_ids, 60)
        thread.join(60)
        assert found["h"] == found["c1"] == {f"id-{i}" for i in range(200, 300)}
        peer = {"task_id": rig.TASK, "which": "peer"}
        assert _value(host, "heteronn_psi_set_size", **peer) == 500
        assert _value(collaborator, "heteronn_psi_set_size", **peer) == 300
        # the runtime's own report (local and intersection) leaves the peer size alone
        NodeObserver(host.metrics, rig.TASK, host.state).psi(0.1, 300, 100)
        assert _value(host, "heteronn_psi_set_size", **peer) == 500
    finally:
        for p in peers.values():
            p.close()
        host.stop()
        collaborator.stop()
    assert _value(host, "heteronn_peers_connected") == 0


def test_own_failures_are_counted() -> None:
    node = rig.start("h")
    try:
        NodeObserver(node.metrics, rig.TASK, node.state).failed("local_error")
        assert _value(node, "heteronn_failures_total", reason="local_error") == 1
    finally:
        node.stop()
