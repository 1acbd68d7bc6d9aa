"""The one-call local simulation runs a whole task (3 parties) and reports per node."""

from __future__ import annotations

import pytest

from party_node import TaskFailed
from party_node.simulate import run_local
from tests import synthetic as syn


def parties(nodes: list[str], faults: str = ""):
    host = syn.SynthHost(nodes[0], nodes, 32, 2, syn.Faults(faults), schedule_timeout=10)
    return host, [
        syn.SynthCollaborator(n, 32, syn.Faults(""), schedule_timeout=10) for n in nodes[1:]
    ]


def test_run_local_three_parties(tmp_path):
    host, collaborators = parties(["h", "c1", "c2"])
    reports = run_local(host, collaborators, task_id="sim", workdir=tmp_path)
    assert set(reports) == {"h", "c1", "c2"}
    assert all(r["status"] == "finished" and r["rounds"] == 2 for r in reports.values())
    assert 0.0 <= reports["h"]["final_test_accuracy"] <= 1.0
    assert (tmp_path / "c2" / "sim" / "feature_model.pt").is_file()


def test_run_local_reports_failure(tmp_path):
    host, collaborators = parties(["h", "c1"], faults="host_raise=1")
    with pytest.raises(TaskFailed, match="injected failure in train_a_batch"):
        run_local(host, collaborators, task_id="sim", workdir=tmp_path)
