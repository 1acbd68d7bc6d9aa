"""A collaborator killed (SIGKILL, engine worker included) in the middle of PSI, both
parties started again with recover: the engine continues after the buckets both ends had
finished, and the result is still exact."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from heteronn.v1 import common_pb2, party_node_pb2_grpc
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.frames import PsiError
from tests.psi_engine_party import ids
from wire.grpc_factory import open_channel

ROOT = Path(__file__).resolve().parents[1]
N, BUCKET = 160_000, 4_000  # 40 buckets
KILL_AFTER = 8  # buckets the collaborator has finished when it is killed


def start_collaborator(folder: Path, recover: bool) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.psi_engine_party",
            str(folder),
            str(N),
            str(BUCKET),
            "1" if recover else "0",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:1] == ["PORT"], line
    return proc, int(line[1])


def run_host(folder: Path, port: int, recover: bool) -> set[str]:
    with open_channel(f"127.0.0.1:{port}") as channel:
        stub = party_node_pb2_grpc.PartyNodeServiceStub(channel)
        options = EngineOptions(
            engine="spu-rr22", folder=folder, recover=recover, bucket_size=BUCKET
        )
        return run_host_engine_psi(
            {"c": stub},
            ids(0, N),
            lambda: common_pb2.Header(task_id="t", sender="h", kind="psi"),
            options,
            120.0,
        )


def finished_buckets(folder: Path) -> int:
    try:
        state = json.loads((folder / "with-h" / "checkpoint" / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(state.get("parsed_bucket_count") or 0)


def test_psi_resumes_after_a_killed_collaborator(tmp_path: Path) -> None:
    host_dir, collab_dir = tmp_path / "h", tmp_path / "c"
    collab, port = start_collaborator(collab_dir, recover=False)
    failure: list[BaseException] = []

    def host() -> None:
        try:
            run_host(host_dir, port, recover=False)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=host)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while finished_buckets(collab_dir) < KILL_AFTER:
            assert time.monotonic() < deadline, "the engine never got to bucket 8"
            assert thread.is_alive(), f"PSI ended before the kill: {failure}"
            time.sleep(0.02)
        killed_at = finished_buckets(collab_dir)
        os.kill(collab.pid, signal.SIGKILL)
        collab.wait(10)
    finally:
        if collab.poll() is None:
            collab.kill()
    thread.join(60)
    assert not thread.is_alive()
    assert killed_at < N // BUCKET, "killed after the end"
    assert failure and isinstance(failure[0], PsiError)
    assert "collaborator 'c'" in str(failure[0])

    collab, port = start_collaborator(collab_dir, recover=True)
    try:
        final = run_host(host_dir, port, recover=True)
        assert collab.stdout is not None
        assert collab.stdout.readline().split() == ["RESULT", str(N - N // 2)]
    finally:
        collab.kill()
        collab.wait(10)
    assert final == set(ids(0, N)) & set(ids(N // 2, N))
    # The resumed engines started from the buckets both had finished, and did only the rest.
    log = (host_dir / "with-c" / "worker.out").read_text(errors="replace")
    resumed_from = [int(x) for x in re.findall(r"parsed_bucket_count_from_peer_ = (\d+)", log)]
    done_now = len(re.findall(r"UpdateParsedBucketCount", log))
    # (the host's checkpoint may trail the collaborator's by a bucket or two when it dies)
    assert resumed_from and resumed_from[0] >= killed_at - 3 > 0, (resumed_from, killed_at)
    assert done_now <= N // BUCKET - resumed_from[0], (done_now, resumed_from)
