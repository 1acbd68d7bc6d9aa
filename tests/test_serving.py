"""Online serving end to end: a trained task's bundles served by `heteronn serve` processes
under mutual TLS, Predict called over gRPC like another service would.

One deployment per module: collaborator 'c1' (lacking id "7") and host 'h'."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch

from heteronn.v1 import serving_pb2, serving_pb2_grpc
from party_node.simulate import run_local
from tests import serving_harness as sh
from tests import serving_synthetic as ss
from tests.harness import ROOT, free_port
from wire.grpc_factory import open_channel

HOST_SPEC = "tests.serving_synthetic:make_host"
COLLAB_SPEC = "tests.serving_synthetic:make_collaborator"
SECRET_ID = "id-that-must-never-be-logged-4471"
OK = serving_pb2.PREDICTION_STATUS_OK
NOT_FOUND = serving_pb2.PREDICTION_STATUS_NOT_FOUND


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serving")
    run_local(ss.make_host(), [ss.make_collaborator()], task_id="t", workdir=workdir)
    certs = sh.issue_certs(workdir / "certs", ["h", "c1"], ["client", "mallory"])
    collab = sh.spawn_serve(
        workdir, "c1", COLLAB_SPEC,
        {"node_id": "c1", "bundle": str(workdir / "c1" / "t" / "model"),
         **sh.tls_files(certs, "c1"), "scheduler_args": {"lacks": ["7"]}},
    )
    host = sh.spawn_serve(
        workdir, "h", HOST_SPEC,
        {"node_id": "h", "bundle": str(workdir / "h" / "t"), **sh.tls_files(certs, "h"),
         "collaborators": {"c1": collab.address}, "max_wait_ms": 1.0, "reflection": True},
    )
    try:
        sh.wait_serving(collab, sh.client_tls(certs, "h"), "c1")
        sh.wait_serving(host, sh.client_tls(certs, "client"), "h")
        channel = open_channel(host.address, sh.client_tls(certs, "client"), server_name="h")
        yield {"workdir": workdir, "certs": certs, "host": host, "collab": collab,
               "stub": serving_pb2_grpc.PredictionServiceStub(channel)}
        channel.close()
    finally:
        host.stop()
        collab.stop()


def predict(stub, ids, timeout=10.0):
    return stub.Predict(serving_pb2.PredictRequest(ids=ids), timeout=timeout)


def test_served_predictions_equal_a_centralized_forward_of_the_saved_weights(deployment):
    stub, workdir = deployment["stub"], deployment["workdir"]
    ids = [str(i) for i in range(ss.N_IDS)]
    expected = ss.centralized(workdir, "t", ids)
    one_by_one = [predict(stub, [i]).predictions[0] for i in ids]
    batched = [p for s in range(0, len(ids), 100)
               for p in predict(stub, ids[s:s + 100]).predictions]
    for answers in (one_by_one, batched):
        assert [p.id for p in answers] == ids
        held = [int(p.id) for p in answers if p.status == OK]
        assert held == [i for i in range(ss.N_IDS) if i != 7]
        got = torch.tensor([list(p.scores) for p in answers if p.status == OK])
        assert torch.allclose(got, expected[held], atol=1e-6, rtol=0)
        assert all(p.predicted_class == int(expected[int(p.id)].argmax()) for p in answers
                   if p.status == OK)


def test_an_id_a_party_lacks_is_a_per_id_not_found_naming_the_parties(deployment):
    reply = predict(deployment["stub"], ["3", "7", SECRET_ID, "3"])
    p3, p7, secret, again = reply.predictions
    assert p3.status == OK and again.status == OK and list(again.scores) == list(p3.scores)
    assert (p7.status, list(p7.missing_at), list(p7.scores)) == (NOT_FOUND, ["c1"], [])
    assert (secret.status, list(secret.missing_at)) == (NOT_FOUND, ["h", "c1"])
    assert p7.predicted_class == -1


def test_get_model_names_the_model_and_its_parties(deployment):
    info = deployment["stub"].GetModel(serving_pb2.GetModelRequest(), timeout=5)
    manifest = json.loads((deployment["workdir"] / "h" / "t" / "model" / "manifest.json")
                          .read_text())
    assert info.model_id == manifest["model_id"]
    assert (info.task_id, info.final_round, info.mode, info.output_width) == ("t", 2, "plain", 3)
    assert list(info.parties) == ["h", "c1"]


@pytest.mark.parametrize(
    ("ids", "message"),
    [([], "carries no ids"), ([str(i) for i in range(1025)], "at most 1024 per call"),
     (["x" * 257], r"ids\[0\] is longer than 256 bytes"), (["1", ""], r"ids\[1\] is empty")],
)
def test_malformed_requests_are_refused_with_the_limit_named(deployment, ids, message):
    with pytest.raises(grpc.RpcError) as err:
        predict(deployment["stub"], ids)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, err.value.details())


def test_reflection_lists_the_prediction_service_only_where_enabled(deployment):
    """The host runs with reflection = true (grpcurl can list Predict); the collaborator with
    the default (off)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    certs, request = deployment["certs"], reflection_pb2.ServerReflectionRequest(list_services="")
    for node, name in ((deployment["host"], "h"), (deployment["collab"], "c1")):
        channel = open_channel(node.address, sh.client_tls(certs, "h"), server_name=name)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        try:
            reply = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
            listed = {s.name for s in reply.list_services_response.service}
        except grpc.RpcError as err:
            listed = {err.code().name}
        channel.close()
        if name == "h":
            assert "heteronn.v1.PredictionService" in listed
        else:
            assert listed == {"UNIMPLEMENTED"}


def test_a_collaborator_answers_only_the_host_of_its_model(deployment):
    certs, collab = deployment["certs"], deployment["collab"]
    request = serving_pb2.EmbedRequest(model_id="x", sender="h", ids=["1"])
    for name, sender, code, text in (
        ("mallory", "mallory", grpc.StatusCode.PERMISSION_DENIED, "names no participant"),
        ("h", "mallory", grpc.StatusCode.PERMISSION_DENIED, "answers only the host"),
        ("h", "h", grpc.StatusCode.FAILED_PRECONDITION, "serves model"),
    ):
        channel = open_channel(collab.address, sh.client_tls(certs, name), server_name="c1")
        stub = serving_pb2_grpc.InferencePeerServiceStub(channel)
        request.sender = sender
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(request, timeout=5)
        channel.close()
        assert err.value.code() == code and text in err.value.details()


def test_the_audit_log_records_who_asked_how_many_but_never_a_raw_id(deployment):
    predict(deployment["stub"], [SECRET_ID, "11", "12"])
    audit = deployment["workdir"] / "c1" / "serving" / "audit.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [r for r in records if r["rpc"] == "Embed" and r["ids"] == 3]
    assert mine and mine[-1]["caller"] == "h" and mine[-1]["found"] == 2
    assert all(SECRET_ID not in json.dumps(r) for r in records)
    found = subprocess.run(
        [sys.executable, "-m", "party_node.cli", "audit", "--log", str(audit), SECRET_ID],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout.splitlines()
    assert found and all(json.loads(line)["caller"] == "h" for line in found)
    for node in (deployment["host"], deployment["collab"]):
        assert SECRET_ID not in node.output()


def test_metrics_expose_latency_batch_sizes_and_errors_by_reason(tmp_path):
    """In-process (a metrics endpoint needs no second process to be read)."""
    from urllib.request import urlopen

    from party_node.app import start_serving
    from party_node.settings import ServingSettings

    run_local(ss.make_host(rounds=1), [ss.make_collaborator()], task_id="m", workdir=tmp_path)
    collab = start_serving(ss.make_collaborator(), ServingSettings(
        node_id="c1", bundle=tmp_path / "c1" / "m", listen="127.0.0.1:0", tls_plaintext=True,
        workdir=tmp_path))
    host = start_serving(ss.make_host(), ServingSettings(
        node_id="h", bundle=tmp_path / "h" / "m", listen="127.0.0.1:0", tls_plaintext=True,
        metrics_port=0, collaborators={"c1": f"127.0.0.1:{collab.port}"}))
    try:
        stub = serving_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{host.port}"))
        predict(stub, ["1", "2", "nope"])
        with pytest.raises(grpc.RpcError):
            predict(stub, [])
        collab.stop()
        with pytest.raises(grpc.RpcError) as err:
            predict(stub, ["1"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        text = urlopen(f"http://127.0.0.1:{host.metrics_port}/metrics", timeout=5).read().decode()
    finally:
        host.stop()
    assert 'heteronn_prediction_latency_seconds_count{rpc="Predict"} 1.0' in text
    assert 'heteronn_prediction_batch_ids_bucket{le="4.0",rpc="Predict"}' in text
    assert 'heteronn_predicted_ids_total{rpc="Predict",status="not_found"} 1.0' in text
    assert 'heteronn_prediction_errors_total{reason="invalid",rpc="Predict"} 1.0' in text
    assert ('heteronn_prediction_errors_total{reason="collaborator_unavailable",rpc="Predict"}'
            in text)


@pytest.mark.parametrize("node", ["c1", "h"])
def test_a_party_without_predict_feature_refuses_to_serve(deployment, tmp_path, node):
    """At once, before it waits for anything: the host's collaborator here is not running."""
    workdir, kind = deployment["workdir"], "collaborator" if node == "c1" else "host"
    code, output = sh.run_serve_to_exit(
        tmp_path, node, f"tests.serving_synthetic:make_no_hook_{kind}",
        {"node_id": node, "bundle": str(workdir / node / "t"), "tls_plaintext": True,
         "collaborators": {"c1": f"127.0.0.1:{free_port()}"} if node == "h" else {},
         "startup_timeout_s": 300},
        timeout=120,
    )
    assert code == 2
    assert f"NoHook{kind.title()} defines no predict_feature(feature_model, ids)" in output
    assert f"this {kind} cannot read its features for new ids, so it cannot serve" in output


def test_bundles_of_another_run_are_refused_naming_the_parties_and_the_difference(
    deployment, tmp_path
):
    # The same task id trained again for one round: another model.
    run_local(ss.make_host(rounds=1), [ss.make_collaborator()], task_id="t", workdir=tmp_path)
    certs = deployment["certs"]
    collab = sh.spawn_serve(
        tmp_path, "c1", COLLAB_SPEC,
        {"node_id": "c1", "bundle": str(tmp_path / "c1" / "t"), **sh.tls_files(certs, "c1")},
    )
    try:
        sh.wait_serving(collab, sh.client_tls(certs, "h"), "c1")
        code, output = sh.run_serve_to_exit(
            tmp_path, "h", HOST_SPEC,
            {"node_id": "h", "bundle": str(deployment["workdir"] / "h" / "t"),
             **sh.tls_files(certs, "h"), "collaborators": {"c1": collab.address}},
        )
    finally:
        collab.stop()
    assert code == 2
    assert "host 'h' serves model" in output and f"collaborator 'c1' at {collab.address}" in output
    assert "final_round 2 vs 1" in output


def test_batch_prediction_equals_online_serving(deployment, tmp_path):
    workdir, certs = deployment["workdir"], deployment["certs"]
    ids = [str(i) for i in range(0, ss.N_IDS, 3)] + ["7", SECRET_ID, "not-at-c1-either"]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    config = tmp_path / "predict.toml"
    from wire.config_file import settings_toml

    config.write_text(settings_toml({
        "node_id": "h", "bundle": str(workdir / "h" / "t"), **sh.tls_files(certs, "h"),
        "collaborators": {"c1": deployment["collab"].address},
    }))
    out = tmp_path / "predictions.csv"
    run = subprocess.run(
        [sys.executable, "-m", "party_node.cli", "predict", "--scheduler", HOST_SPEC,
         "--config", str(config), "--ids", str(tmp_path / "ids.txt"), "--output", str(out),
         "--batch-rows", "16"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    online = {p.id: p for p in predict(deployment["stub"], ids).predictions}
    assert [r[0] for r in rows] == [i for i in ids if online[i].status == OK]
    for r in rows:
        assert int(r[1]) == online[r[0]].predicted_class
        assert torch.allclose(torch.tensor([float(v) for v in r[2:]]),
                              torch.tensor(list(online[r[0]].scores)), atol=1e-6, rtol=0)
    missing = dict(line.split(",", 1) for line in
                   (tmp_path / "predictions.csv.missing.csv").read_text().splitlines()[1:])
    assert missing == {SECRET_ID: "some party (PSI)", "not-at-c1-either": "some party (PSI)",
                       "7": "c1"}
    assert (report["distinct"], report["intersection"], report["predicted"], report["missing"]) \
        == (len(ids), len(ids) - 2, len(ids) - 3, 3)
    assert "predict" in run.stderr  # the progress bar
    # The Python entry point beside launch_task writes the same predictions.
    same = ss.make_host().batch_predict(
        bundle=workdir / "h" / "t", output=tmp_path / "py.csv", ids=ids, node_id="h",
        collaborators={"c1": deployment["collab"].address}, **sh.tls_files(certs, "h"),
    )
    assert same["predicted"] == report["predicted"]
    assert (tmp_path / "py.csv").read_text() == out.read_text()


def node_modules() -> Path:
    """@grpc/grpc-js and @grpc/proto-loader, installed from npm on first use (pinned in
    examples/clients/package.json) into .venv-tools/node-client/."""
    target = ROOT / ".venv-tools" / "node-client"
    if not (target / "node_modules" / "@grpc" / "grpc-js").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "examples" / "clients" / "package.json", target / "package.json")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=target,
                       check=True, timeout=600)
    return target / "node_modules"


def test_predict_from_node_js_and_from_python_with_only_the_proto_files(deployment, tmp_path):
    certs, host = deployment["certs"], deployment["host"]
    ids = ["3", "7", SECRET_ID]
    tls_args = ["--ca", str(certs / "ca.crt"), "--cert", str(certs / "client.crt"),
                "--key", str(certs / "client.key"), "--server-name", "h"]
    node = subprocess.run(
        ["node", str(ROOT / "examples" / "clients" / "predict.js"), "--address", host.address,
         "--proto-root", str(ROOT / "proto"), *tls_args, *ids],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "NODE_PATH": str(node_modules())},
    )
    assert node.returncode == 0, node.stderr
    # Python with stubs generated here from the .proto files, not heteronn's package.
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"--python_out={stubs}", f"--grpc_python_out={stubs}",
         str(ROOT / "proto/heteronn/v1/common.proto"),
         str(ROOT / "proto/heteronn/v1/serving.proto")],
        check=True,
    )
    python = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "clients" / "predict.py"), "--address",
         host.address, *tls_args, *ids],
        capture_output=True, text=True, timeout=120, cwd=stubs,
        env={**os.environ, "PYTHONPATH": str(stubs)},
    )
    assert python.returncode == 0, python.stderr
    expected = {p.id: p for p in predict(deployment["stub"], ids).predictions}
    for out in (node.stdout, python.stdout):
        got = [json.loads(line) for line in out.splitlines()]
        assert [g["id"] for g in got] == ids
        for g in got:
            p = expected[g["id"]]
            assert g["status"] == serving_pb2.PredictionStatus.Name(p.status)
            assert g["predicted_class"] == p.predicted_class
            assert g["missing_at"] == list(p.missing_at)
            assert torch.allclose(torch.tensor(g["scores"] or [0.0]),
                                  torch.tensor(list(p.scores) or [0.0]), atol=1e-6)
