"""The model bundle a finished task leaves at each party (party_node.serving.bundle): one
model id agreed by all, every file's sha256 checked before loading, TorchScript that
reproduces the Python models without their classes, and clear refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from party_node.errors import BundleError
from party_node.serving.bundle import differences, read_bundle, summary
from party_node.serving.models import load_collaborator_model, load_host_model
from party_node.simulate import run_local
from tests import serving_synthetic as ss
from tests import synthetic as syn


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bundle")
    reports = run_local(ss.make_host(), [ss.make_collaborator()], task_id="t", workdir=workdir)
    return workdir, reports


def test_every_party_writes_a_bundle_with_one_agreed_model_id(trained):
    workdir, reports = trained
    host = read_bundle(workdir / "h" / "t", role="host")
    collab = read_bundle(workdir / "c1" / "t" / "model", role="collaborator")
    assert host.model_id == collab.model_id == reports["h"]["model_id"] == reports["c1"]["model_id"]
    assert host.manifest["parties"] == collab.manifest["parties"]
    m = host.manifest
    assert (m["task_id"], m["final_round"], m["mode"], m["role"]) == ("t", 2, "plain", "host")
    assert [p["node_id"] for p in m["participants"]] == ["c1", "h"]
    assert set(m["files"]) == {"feature_model.pt", "feature_model.ts", "infer_model.pt",
                               "predictor.ts"}
    assert m["predictor"]["keys"] == ["c1", "h"] and m["predictor"]["output_shape"] == [3]
    assert collab.manifest["feature_model"]["inputs"] == [{"shape": [4], "dtype": "float32"}]
    assert set(collab.manifest["files"]) == {"feature_model.pt", "feature_model.ts"}


def test_torchscript_reproduces_the_saved_weights_without_the_classes(trained):
    workdir, _ = trained
    ids = [str(i) for i in range(syn.N_ROWS + syn.N_TEST)]
    host = load_host_model(read_bundle(workdir / "h" / "t"))
    collab = load_collaborator_model(read_bundle(workdir / "c1" / "t"))
    rows = torch.arange(len(ids))
    with torch.no_grad():
        z_h = host.feature_model(syn.columns("h")[rows])
        z_c = collab.feature_model(syn.columns("c1")[rows])
        served = host.predictor(z_c, z_h)  # inputs in the order of the feature keys
    assert host.keys == ["c1", "h"] and host.widths == {"c1": syn.OUT, "h": syn.OUT}
    assert torch.allclose(served, ss.centralized(workdir, "t", ids), atol=1e-6, rtol=0)


def test_a_modified_file_is_refused_naming_it(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(workdir / "c1" / "t" / "model", copy)
    with (copy / "feature_model.ts").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"feature_model\.ts has sha256 .* modified"):
        read_bundle(copy)
    (copy / "feature_model.ts").unlink()
    with pytest.raises(BundleError, match=r"feature_model\.ts is missing"):
        read_bundle(copy)


def test_an_edited_manifest_is_refused(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(workdir / "c1" / "t" / "model", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["final_round"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="edited after the parties agreed"):
        read_bundle(copy)


def test_wrong_role_and_missing_bundle_say_what_to_do(trained, tmp_path):
    workdir, _ = trained
    with pytest.raises(BundleError, match="collaborator 'c1''s; this scheduler is a host"):
        read_bundle(workdir / "c1" / "t", role="host")
    with pytest.raises(BundleError, match=r"no model bundle at .*manifest\.json is missing"):
        read_bundle(tmp_path)


def test_differences_name_what_differs():
    base = {"task_id": "t", "final_round": 2, "mode": "plain",
            "participants": [{"node_id": "c1", "role": "collaborator"}],
            "node_id": "c1", "digest": "d1", "parties": {"c1": "d1", "h": "d0"}}
    assert differences(base, dict(base)) == []
    assert differences(base, {**base, "final_round": 3}) == ["final_round 2 vs 3"]
    other_run = {**base, "digest": "d9", "parties": {"c1": "d9", "h": "d8"}}
    assert "not the ones agreed" in differences(base, other_run)[0]


def test_a_host_without_predict_a_batch_leaves_a_bundle_that_says_why(tmp_path):
    host = syn.SynthHost("h", ["h", "c1"], 32, 1, syn.Faults(""))  # no predict_a_batch
    run_local(host, [ss.make_collaborator()], task_id="np", workdir=tmp_path)
    bundle = read_bundle(tmp_path / "h" / "np")
    assert summary(bundle)["model_id"] == bundle.model_id
    with pytest.raises(BundleError, match="defines no predict_a_batch"):
        load_host_model(bundle)


class Untraceable(torch.nn.Module):
    """Its forward depends on the batch size: a trace would freeze one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, syn.OUT)

    def forward(self, x):
        return self.lin(x) if x.shape[0] > 1 else self.lin(x) * 2


class UntraceableCollaborator(ss.ServingCollaborator):
    def build_feature_model(self):
        torch.manual_seed(0)
        return Untraceable()


def test_an_untraceable_feature_model_is_recorded_and_refused_at_serving(tmp_path):
    collab = UntraceableCollaborator("c1", 32, syn.Faults(""))
    run_local(ss.make_host(rounds=1), [collab], task_id="u", workdir=tmp_path)
    bundle = read_bundle(tmp_path / "c1" / "u")
    assert "feature_model.ts" not in bundle.manifest["files"]
    with pytest.raises(BundleError, match="differs from the Python one on one row"):
        load_collaborator_model(bundle)
