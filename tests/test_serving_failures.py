"""Serving when a collaborator misbehaves: over its rate cap, hung past a deadline, killed
and restarted. Each failure must end the call within its deadline with the documented code
and a message naming the collaborator; nothing may hang. Real processes, mutual TLS."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from heteronn.v1 import serving_pb2, serving_pb2_grpc
from party_node.simulate import run_local
from tests import serving_harness as sh
from tests import serving_synthetic as ss
from wire.grpc_factory import open_channel

COLLAB_SPEC = "tests.serving_synthetic:make_collaborator"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("failures")
    run_local(ss.make_host(rounds=1), [ss.make_collaborator()], task_id="t", workdir=workdir)
    certs = sh.issue_certs(workdir / "certs", ["h", "c1"], ["client"])
    collab_settings = {
        "node_id": "c1", "bundle": str(workdir / "c1" / "t"), **sh.tls_files(certs, "c1"),
        "limits": {"max_ids_per_s": 50, "max_embed_ids": 64},
    }
    collab = sh.spawn_serve(workdir, "c1", COLLAB_SPEC, collab_settings)
    host = sh.spawn_serve(
        workdir, "h", "tests.serving_synthetic:make_host",
        {"node_id": "h", "bundle": str(workdir / "h" / "t"), **sh.tls_files(certs, "h"),
         "collaborators": {"c1": collab.address}, "max_batch": 64,
         "limits": {"max_embed_ids": 64}},
    )
    state = {"collab": collab}
    try:
        sh.wait_serving(collab, sh.client_tls(certs, "h"), "c1")
        sh.wait_serving(host, sh.client_tls(certs, "client"), "h")
        channel = open_channel(host.address, sh.client_tls(certs, "client"), server_name="h")

        def restart() -> None:
            state["collab"] = sh.spawn_serve(
                workdir, "c1", COLLAB_SPEC, collab_settings,
                port=int(collab.address.rsplit(":", 1)[1]),
            )
            sh.wait_serving(state["collab"], sh.client_tls(certs, "h"), "c1")

        as_host = open_channel(collab.address, sh.client_tls(certs, "h"), server_name="c1")
        manifest = json.loads((workdir / "c1" / "t" / "model" / "manifest.json").read_text())
        yield {"stub": serving_pb2_grpc.PredictionServiceStub(channel), "state": state,
               "restart": restart, "address": collab.address, "as_host": as_host,
               "model_id": manifest["model_id"]}
        channel.close()
        as_host.close()
    finally:
        host.stop()
        state["collab"].stop()


def call(stub, ids, timeout):
    """(status code, details, seconds) of one Predict."""
    started = time.monotonic()
    try:
        stub.Predict(serving_pb2.PredictRequest(ids=ids), timeout=timeout)
        return grpc.StatusCode.OK, "", time.monotonic() - started
    except grpc.RpcError as err:
        return err.code(), err.details(), time.monotonic() - started


def timed_call(stub, ids, timeout):
    """call(), plus when it ended (time.monotonic())."""
    return (*call(stub, ids, timeout), time.monotonic())


def test_over_the_rate_cap_the_host_hears_resource_exhausted_naming_the_collaborator(pair):
    """Drain the collaborator's bucket (50 ids/s, burst 64) as its host would, then Predict."""
    ids = [str(i) for i in range(60)]
    embed = serving_pb2_grpc.InferencePeerServiceStub(pair["as_host"]).Embed
    request = serving_pb2.EmbedRequest(model_id=pair["model_id"], sender="h", ids=ids)
    refusal = None
    for _ in range(10):
        try:
            embed(request, timeout=5)
        except grpc.RpcError as err:
            refusal = err
            break
    assert refusal is not None and refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 50 ids per second" in refusal.details()
    code, details, _ = call(pair["stub"], ids, 5.0)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "collaborator 'c1'" in details and "at most 50 ids per second" in details
    time.sleep(1.5)  # the bucket refills


def test_a_deadline_that_expires_names_the_collaborator_that_hung(pair):
    stub, collab = pair["stub"], pair["state"]["collab"]
    assert call(stub, ["1"], 5.0)[0] == grpc.StatusCode.OK
    os.kill(collab.proc.pid, signal.SIGSTOP)
    try:
        code, details, seconds = call(stub, ["2"], 1.0)
    finally:
        os.kill(collab.proc.pid, signal.SIGCONT)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"collaborator 'c1' at {pair['address']} did not answer" in details
    assert seconds < 1.0
    time.sleep(0.5)
    assert call(stub, ["3"], 5.0)[0] == grpc.StatusCode.OK


def test_a_killed_collaborator_fails_calls_fast_with_unavailable_and_nothing_hangs(pair):
    stub, collab = pair["stub"], pair["state"]["collab"]
    assert call(stub, ["1"], 5.0)[0] == grpc.StatusCode.OK
    with ThreadPoolExecutor(8) as pool:  # callers in flight while it dies
        running = [pool.submit(timed_call, stub, [str(i % 40)], 3.0) for i in range(400)]
        time.sleep(0.2)
        collab.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        collab.proc.wait(timeout=10)
        results = [f.result(timeout=30) for f in running]
    assert all(seconds < 3.0 for _, _, seconds, _ in results), "a call outlived its deadline"
    after = [code for code, _, _, ended in results if ended > killed]
    assert after and grpc.StatusCode.OK not in after[-50:], "calls still succeeded after the kill"
    # (before the kill, the 50 ids/s cap may have refused some: RESOURCE_EXHAUSTED is theirs)
    assert set(after) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE,
                          grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    code, details, seconds = call(stub, ["5"], 3.0)
    assert code == grpc.StatusCode.UNAVAILABLE and seconds < 1.0
    assert f"collaborator 'c1' at {pair['address']} is unavailable" in details
    pair["restart"]()
    deadline = time.monotonic() + 10
    while call(stub, ["6"], 2.0)[0] != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "serving did not resume after the restart"
        time.sleep(0.2)
