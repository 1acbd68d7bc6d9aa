"""Secure serving: the secure bundles of a trained task served by `heteronn serve`
processes under mutual TLS; the collaborator's features leave it only inside CKKS
ciphertexts under the host's key, which the collaborator computed with its own share."""

from __future__ import annotations

import json

import pytest
import torch

from heteronn.v1 import serving_pb2, serving_pb2_grpc
from party_node.simulate import run_local
from tests import serving_harness as sh
from tests import serving_synthetic as ss
from tests import synthetic as syn
from tests.wire_capture import RecordingProxy
from wire.grpc_factory import open_channel

OK = serving_pb2.PREDICTION_STATUS_OK


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("secure-serving")
    run_local(ss.make_secure_host(), [ss.make_secure_collaborator()], task_id="s",
              workdir=workdir)
    return workdir


def serve_pair(workdir, task, certs, specs, collaborator_address=None, lacks=("7",)):
    """Collaborator and host serving nodes of `task`; the host dials `collaborator_address`
    (e.g. a proxy in front of the collaborator) if given. `specs`: (host, collaborator)
    factories; `certs` None: plaintext."""
    def tls(name: str) -> dict:
        return sh.tls_files(certs, name) if certs else {"tls_plaintext": True}

    collab = sh.spawn_serve(
        workdir, "c1", specs[1],
        {"node_id": "c1", "bundle": str(workdir / "c1" / task), **tls("c1"),
         "scheduler_args": {"lacks": list(lacks)}},
    )
    target = collaborator_address(collab) if collaborator_address else collab.address
    host = sh.spawn_serve(
        workdir, "h", specs[0],
        {"node_id": "h", "bundle": str(workdir / "h" / task), **tls("h"),
         "collaborators": {"c1": target}},
    )
    return collab, host


SECURE = ("tests.serving_synthetic:make_secure_host",
          "tests.serving_synthetic:make_secure_collaborator")
PLAIN = ("tests.serving_synthetic:make_host", "tests.serving_synthetic:make_collaborator")


def test_secure_bundles_hold_shares_never_w(trained):
    host = json.loads((trained / "h" / "s" / "model" / "manifest.json").read_text())
    collab = json.loads((trained / "c1" / "s" / "model" / "manifest.json").read_text())
    assert host["model_id"] == collab["model_id"] and host["mode"] == collab["mode"] == "secure"
    assert set(host["files"]) == {"feature_model.pt", "feature_model.ts", "infer_model.pt",
                                  "predictor.ts", "host_projection.pt", "projection_shares.pt"}
    assert set(collab["files"]) == {"feature_model.pt", "feature_model.ts",
                                    "projection_share.pt"}
    assert collab["projection"]["params"]["feature_bound"] == 64.0


def test_served_predictions_equal_a_centralized_forward_within_1e_4(trained):
    certs = sh.issue_certs(trained / "certs", ["h", "c1"], ["client"])
    collab, host = serve_pair(trained, "s", certs, SECURE)
    try:
        sh.wait_serving(collab, sh.client_tls(certs, "h"), "c1")
        sh.wait_serving(host, sh.client_tls(certs, "client"), "h")
        channel = open_channel(host.address, sh.client_tls(certs, "client"), server_name="h")
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        ids = [str(i) for i in range(ss.N_IDS)]
        batched = [p for s in range(0, len(ids), 64) for p in
                   stub.Predict(serving_pb2.PredictRequest(ids=ids[s:s + 64]), timeout=60)
                   .predictions]
        one_by_one = [stub.Predict(serving_pb2.PredictRequest(ids=[i]), timeout=60)
                      .predictions[0] for i in ids[:40]]
        info = stub.GetModel(serving_pb2.GetModelRequest(), timeout=5)
        channel.close()
    finally:
        host.stop()
        collab.stop()
    assert info.mode == "secure"
    expected = ss.centralized_secure(trained, "s", ids)
    held = [int(p.id) for p in batched if p.status == OK]
    assert held == [i for i in range(ss.N_IDS) if i != 7]
    assert [list(p.missing_at) for p in batched if p.status != OK] == [["c1"]]
    got = torch.tensor([list(p.scores) for p in batched if p.status == OK])
    assert torch.allclose(got, expected[held], atol=1e-4, rtol=0)
    for p in one_by_one:
        if p.status == OK:
            assert torch.allclose(torch.tensor(list(p.scores)), expected[int(p.id)], atol=1e-4)


def features_on_the_wire(workdir, task: str, ids: list[str], secure: bool) -> list[bytes]:
    """The byte strings the collaborator's features or weights would have on the wire: each
    row of X (float32 and float64) and, in secure mode, each row of its share V and of
    W = U + V (float64)."""
    rows = torch.tensor([int(i) for i in ids])
    model = syn.feature_model("c1")
    model.load_state_dict(torch.load(workdir / "c1" / task / "model" / "feature_model.pt",
                                     weights_only=True))
    with torch.no_grad():
        x = model.eval()(syn.columns("c1")[rows])
    pieces = [r.numpy().tobytes() for r in x] + [r.double().numpy().tobytes() for r in x]
    if secure:
        v = torch.load(workdir / "c1" / task / "model" / "projection_share.pt",
                       weights_only=True)["v"].double()
        u = torch.load(workdir / "h" / task / "model" / "projection_shares.pt",
                       weights_only=True)["c1"].double()
        pieces += [r.numpy().tobytes() for r in (*v, *(u + v))]
    return pieces


def capture(workdir, task: str, specs, ids: list[str]) -> bytes:
    """Serve in plaintext with a recording proxy in front of the collaborator, predict
    `ids`; every byte the collaborator sent the host."""
    proxies: list[RecordingProxy] = []

    def via_proxy(collab):
        proxies.append(RecordingProxy(collab.address))
        return proxies[-1].address

    collab, host = serve_pair(workdir, task, None, specs, via_proxy, lacks=())
    try:
        sh.wait_serving(collab, None, "c1")
        sh.wait_serving(host, None, "h")
        channel = open_channel(host.address)
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(serving_pb2.PredictRequest(ids=ids), timeout=60)
        channel.close()
    finally:
        host.stop()
        collab.stop()
        for proxy in proxies:
            proxy.close()
    assert all(p.status == OK for p in reply.predictions)
    return proxies[0].received()


def test_a_wire_capture_shows_the_host_never_receives_x_or_w(trained, tmp_path):
    """Every byte the collaborator sends the host, recorded by a proxy (plaintext gRPC):
    no row of X, V or W in secure mode. The control: the same capture of plain serving
    holds every row of X verbatim."""
    ids = [str(i) for i in range(0, 60)]
    received = capture(trained, "s", SECURE, ids)
    assert len(received) > 100_000  # the session's public keys and the ciphertexts passed
    secrets = features_on_the_wire(trained, "s", ids, secure=True)
    assert len(secrets) == 2 * len(ids) + 2 * syn.OUT
    assert [s for s in secrets if s in received] == []

    run_local(ss.make_host(rounds=1), [ss.make_collaborator()], task_id="p", workdir=tmp_path)
    plain = capture(tmp_path, "p", PLAIN, ids)
    x_rows = features_on_the_wire(tmp_path, "p", ids, secure=False)[: len(ids)]
    assert all(row in plain for row in x_rows)
