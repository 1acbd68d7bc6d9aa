"""A collaborator killed (SIGKILL, engine worker included) in the middle of PSI, both
parties started again with recover: the engine continues after the buckets both ends had
finished, and the result is still exact. When spu cannot continue (the host's checkpoint
trails the collaborator's), both parties run the PSI afresh in the same recover."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heteronn.v1 import common_pb2, party_node_pb2_grpc
from party_node.psi.engine_rpc import EngineOptions, run_host_engine_psi
from party_node.psi.frames import PsiError
from tests.harness import run_task
from tests.psi_engine_party import ids
from tests.test_equivalence import assert_same_weights, centralized, final_weights
from tests.test_resume import COMMON
from wire.grpc_factory import open_channel

ROOT = Path(__file__).resolve().parents[1]
N, BUCKET = 160_000, 4_000  # 40 buckets
KILL_AFTER = 8  # buckets the collaborator has finished when it is killed
#: What a party logs when spu could not continue and the PSI started again (engine_rpc).
RESTARTED = "PSI restarted from scratch"


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


def finished_buckets(folder: Path, peer: str = "h") -> int:
    try:
        state = json.loads((folder / f"with-{peer}" / "checkpoint" / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(state.get("parsed_bucket_count") or 0)


def kill_mid_psi(host_dir: Path, collab_dir: Path) -> int:
    """Run PSI and SIGKILL the collaborator once it has finished KILL_AFTER buckets; returns
    how many it had finished."""
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
    return killed_at


def recover(host_dir: Path, collab_dir: Path) -> None:
    """Both parties again with recover=True: each learns the exact intersection."""
    collab, port = start_collaborator(collab_dir, recover=True)
    try:
        final = run_host(host_dir, port, recover=True)
        assert collab.stdout is not None
        assert collab.stdout.readline().split() == ["RESULT", str(N - N // 2)]
    finally:
        collab.kill()
        collab.wait(10)
    assert final == set(ids(0, N)) & set(ids(N // 2, N))


def engine_log(host_dir: Path) -> tuple[list[int], int]:
    """From the host's last worker: the bucket it resumed from (none in a fresh run) and how
    many buckets it did."""
    log = (host_dir / "with-c" / "worker.out").read_text(errors="replace")
    resumed_from = [int(x) for x in re.findall(r"parsed_bucket_count_from_peer_ = (\d+)", log)]
    return resumed_from, len(re.findall(r"UpdateParsedBucketCount", log))


def test_psi_resumes_after_a_killed_collaborator(tmp_path: Path, caplog) -> None:
    """Either spu continues after the common checkpoint and does only the rest, or (the host's
    checkpoint trailing the collaborator's, about one run in four on this machine) it cannot,
    and both parties run the PSI afresh: the recover succeeds both ways."""
    host_dir, collab_dir = tmp_path / "h", tmp_path / "c"
    killed_at = kill_mid_psi(host_dir, collab_dir)
    with caplog.at_level(logging.WARNING, logger="heteronn.psi"):
        recover(host_dir, collab_dir)
    resumed_from, done_now = engine_log(host_dir)
    if RESTARTED in caplog.text:
        print("spu could not resume: PSI restarted afresh")
        assert not any(resumed_from) and done_now == N // BUCKET, (resumed_from, done_now)
        return
    print(f"spu resumed from bucket {resumed_from[:1]} (collaborator killed at {killed_at})")
    # The resumed engines started from the buckets both had finished, and did only the rest
    # (the host's checkpoint may trail the collaborator's by a bucket or two when it dies).
    assert resumed_from and resumed_from[0] >= killed_at - 3 > 0, (resumed_from, killed_at)
    assert done_now <= N // BUCKET - resumed_from[0], (done_now, resumed_from)


def trail_by_a_bucket(checkpoint: Path, collab_dir: Path) -> None:
    """The host's checkpoint one bucket behind the collaborator's: spu's resumed run fails at
    both ends in its finalisation ('duplicated read_cnt in result'), every time. (About one
    kill in eight leaves the host's checkpoint.json cut short already: its worker stopped
    while writing it; then spu fails as in `truncate`.)"""
    try:
        state = json.loads(checkpoint.read_text())
    except ValueError:
        return
    behind = min(int(state["parsed_bucket_count"]), finished_buckets(collab_dir) - 1)
    assert behind > 0, state
    state["parsed_bucket_count"] = str(behind)
    checkpoint.write_text(json.dumps(state))


def truncate(checkpoint: Path, collab_dir: Path) -> None:
    """The host's checkpoint.json cut short (its worker stopped while writing it, seen on
    main): spu fails at the host as it starts ('couldn't be parsed as RecoveryCheckpoint'),
    while the collaborator's worker waits for the link."""
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])


@pytest.mark.parametrize("damage", [trail_by_a_bucket, truncate], ids=lambda f: f.__name__)
def test_psi_restarts_afresh_when_spu_cannot_resume(tmp_path: Path, caplog, damage) -> None:
    """spu cannot continue the killed PSI: the same recover runs it afresh, both workers
    together, and ends with the exact intersection."""
    host_dir, collab_dir = tmp_path / "h", tmp_path / "c"
    kill_mid_psi(host_dir, collab_dir)
    damage(host_dir / "with-c" / "checkpoint" / "checkpoint.json", collab_dir)
    with caplog.at_level(logging.WARNING, logger="heteronn.psi"):
        recover(host_dir, collab_dir)
    assert RESTARTED in caplog.text
    assert "c-" not in caplog.text  # no id in the log
    resumed_from, done_now = engine_log(host_dir)
    assert not any(resumed_from) and done_now == N // BUCKET  # the fresh run did every bucket


@pytest.mark.timeout(300)
def test_recover_trains_on_after_spu_cannot_resume_the_psi(tmp_path: Path) -> None:
    """A whole task: the collaborator dies in round 3; both parties' engine results are lost
    (killed after spu finished, before the run was recorded as done), so spu's recovery of
    the finished run fails at both ends. recover=True still runs PSI (afresh), resumes
    training from round 2 and ends with the weights of uninterrupted training."""
    nodes = ["h", "c1"]
    first = run_task(tmp_path, nodes, "r", common=COMMON, per_node={"c1": ["--faults", "die=3"]})
    assert first["c1"].code == 17, first["c1"].stderr
    for node, peer in (("h", "c1"), ("c1", "h")):
        (tmp_path / node / "r" / "psi" / f"with-{peer}" / "done.json").unlink()

    second = run_task(tmp_path, nodes, "r", common=[*COMMON, "--recover"])
    for node in nodes:
        assert second[node].code == 0, f"{node} did not finish:\n{second[node].stderr}"
        report = json.loads((tmp_path / node / "r" / "report.json").read_text())
        assert (report["status"], report["resumed_from_round"]) == ("finished", 2), report
    host_report = json.loads((tmp_path / "h" / "r" / "report.json").read_text())
    assert host_report["intersection_size"] == 256, host_report
    assert RESTARTED in second["h"].stderr
    got = final_weights(tmp_path, nodes, "r")
    assert_same_weights(got, centralized(nodes), 1e-5, "uninterrupted training")
