"""Serving's parts one at a time (fakes for the others): the dynamic batcher, the hook
checks, the limits, the collaborator's admission of its host's calls, the audit log."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from party_node.errors import (
    BadMessage,
    DeadlineExpired,
    HookFailed,
    ModelMismatch,
    NotAllowed,
    Overloaded,
    RateLimited,
)
from party_node.serving.audit import AuditLog, lookup
from party_node.serving.batching import DynamicBatcher
from party_node.serving.hooks import FeatureSource, check_rows
from party_node.serving.limits import RateLimiter, ServingLimits, check_ids
from party_node.transport.serving_handler import PeerCall, PeerCallHandler


class SlowRun:
    """A batch function that records its batches and blocks until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, ids: list[str], deadline: float) -> list[str]:
        self.batches.append(ids)
        self.release.wait(5)
        return ids


def test_calls_arriving_while_a_batch_runs_share_the_next_batch():
    run = SlowRun()
    batcher = DynamicBatcher(run, max_batch=8, max_wait_s=0.05, workers=1)
    try:
        far = time.monotonic() + 10
        first = batcher.submit(["a"], far)
        time.sleep(0.1)  # the first batch is running (and blocked)
        rest = [batcher.submit(ids, far) for ids in (["b", "c"], ["c"], ["d"] * 2)]
        run.release.set()
        assert first.result(5) == ["a"]
        assert [f.result(5) for f in rest] == [["b", "c", "d"]] * 3
        assert run.batches == [["a"], ["b", "c", "d"]]
    finally:
        batcher.stop()


def test_an_idle_batcher_starts_at_once_and_max_batch_splits_the_queue():
    run = SlowRun()
    run.release.set()
    batcher = DynamicBatcher(run, max_batch=3, max_wait_s=1.0, workers=1)
    try:
        started = time.monotonic()
        assert batcher.submit(["x"], started + 10).result(5) == ["x"]
        assert time.monotonic() - started < 0.5  # did not wait max_wait for company
        run.release.clear()
        blocker = batcher.submit(["y"], started + 10)
        time.sleep(0.1)
        waiting = [batcher.submit([f"{i}a", f"{i}b"], started + 10) for i in range(3)]
        run.release.set()
        blocker.result(5)
        for f in waiting:
            f.result(5)
        assert all(len(b) <= 3 for b in run.batches)
    finally:
        batcher.stop()


def test_an_expired_call_fails_without_work_and_the_queue_is_bounded():
    run = SlowRun()
    batcher = DynamicBatcher(run, max_batch=4, max_wait_s=0.0, workers=1, max_queued_ids=3)
    try:
        now = time.monotonic()
        blocker = batcher.submit(["a"], now + 10)
        time.sleep(0.1)
        expired = batcher.submit(["b"], now + 0.05)
        with pytest.raises(Overloaded, match="max_queued_ids=3"):
            batcher.submit(["c", "d", "e"], now + 10)
        time.sleep(0.1)
        run.release.set()
        blocker.result(5)
        with pytest.raises(DeadlineExpired):
            expired.result(5)
        assert run.batches == [["a"]]
    finally:
        batcher.stop()


def test_predict_feature_may_return_a_tensor_or_the_found_ids_with_their_rows():
    ids = ["a", "b", "c"]
    assert check_rows(torch.ones(3, 2), ids).found == [True, True, True]
    rows = check_rows((["a", "c"], torch.ones(2, 2)), ids)
    assert rows.found == [True, False, True] and rows.count == 2


class Party:
    _role = "collaborator"

    def __init__(self, value):
        self.value = value

    def predict_feature(self, feature_model, ids):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.mark.parametrize(
    ("value", "logged"),
    [((["c", "a"], torch.ones(2, 1)), "in the order of ids"),
     (torch.ones(2, 1), "2 rows for 3 found ids"),
     (torch.tensor([[float("nan")]] * 3), "NaN"),
     (KeyError("secret-id-17"), "raised KeyError at")],
)
def test_a_bad_hook_fails_the_call_naming_the_party_never_an_id(value, logged, caplog):
    source = FeatureSource(Party(value), torch.nn.Identity(), "collaborator 'c1'")
    with pytest.raises(HookFailed, match="collaborator 'c1' could not read its features"):
        source.read(["a", "b", "c"])
    assert logged in caplog.text and "secret-id-17" not in caplog.text


def test_ids_are_checked_by_count_and_length_and_named_by_position():
    assert check_ids(["a", "b"], 2, 8, "Predict") == ["a", "b"]
    with pytest.raises(BadMessage, match="at most 2 per call"):
        check_ids(["a", "b", "c"], 2, 8, "Predict")
    with pytest.raises(BadMessage, match=r"ids\[1\] is longer than 8 bytes"):
        check_ids(["a", "ééééé"], 2, 8, "Predict")


def test_the_rate_limiter_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate=10, burst=10)
    assert limiter.take(10) and not limiter.take(5)
    time.sleep(0.6)
    assert limiter.take(5)
    assert RateLimiter(0, 0).take(10**9)


class FakeBundle:
    host, node_id, model_id = "h", "c1", "m" * 64


def handler(**limits) -> PeerCallHandler:
    return PeerCallHandler(FakeBundle(), ServingLimits(**limits), lambda b: frozenset({"1", "2"}))


def call(**fields) -> PeerCall:
    base = {"rpc": "Embed", "sender": "h", "model_id": "m" * 64, "ids": ["1"], "batch_id": "",
            "identities": frozenset({"h"})}
    return PeerCall(**{**base, **fields})


def test_a_collaborator_admits_only_its_hosts_calls_for_its_model():
    h = handler()
    assert h.admit(call()) == ["1"]
    with pytest.raises(NotAllowed, match="answers only the host of its model"):
        h.admit(call(sender="x", identities=frozenset({"x"})))
    with pytest.raises(NotAllowed, match="certificate names"):
        h.admit(call(identities=frozenset({"x"})))
    with pytest.raises(ModelMismatch, match="serves model mmmm"):
        h.admit(call(model_id="other"))
    with pytest.raises(NotAllowed, match="outside its PSI intersection"):
        h.admit(call(batch_id="b1", ids=["1", "3"]))
    assert h.admit(call(batch_id="b1", ids=["2", "1"])) == ["2", "1"]


def test_online_calls_count_against_the_rate_cap_batch_calls_do_not():
    h = handler(max_ids_per_s=5, max_embed_ids=4)
    assert h.admit(call(ids=["1", "2", "3", "4"]))
    with pytest.raises(RateLimited, match="at most 5 ids per second"):
        h.admit(call(ids=["1", "2"]))
    assert h.admit(call(batch_id="b1", ids=["1", "2"]))


def test_the_audit_log_answers_who_asked_about_an_id_only_with_its_key(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("h", "Embed", ["alice", "bob"], 1)
    log.record("h", "Embed", ["carol"], 1, batch_id="b1", digests=False)
    log.close()
    text = (tmp_path / "audit.jsonl").read_text()
    assert "alice" not in text and "bob" not in text
    assert json.loads(text.splitlines()[1]) == {**json.loads(text.splitlines()[1]), "ids": 1}
    found = list(lookup(tmp_path / "audit.jsonl", tmp_path / "audit.key", ["bob", "zed"]))
    assert [(item, entry["caller"], entry["ids"]) for item, entry in found] == [("bob", "h", 2)]
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("width", [1, 3])
def test_the_predictions_file_reads_back_as_csv_with_awkward_ids(width):
    """The batch job's row writer formats by hand (speed): csv.reader must read back every id
    (commas, quotes, spaces) and the scores to 7 significant digits."""
    import csv
    import io

    from party_node.serving.batch_job import _write
    from party_node.serving.predict import Predictions

    ids = ["1", "a,b", 'say "hi"', " sp ", "lacks", "x\ty"]
    scores = torch.tensor([[1e-9, -2.5, 3.0], [0.1, 0.2, 0.3], [7.0, 1.0, 0.0],
                           [-1.0, 5e6, 2.0], [3.25, 0.0, 1.0]])[:, :width]
    rows = [0, 1, 2, 3, -1, 4]
    out, missing = io.StringIO(), io.StringIO()
    done, lost = _write(Predictions(ids, rows, scores, {"c1": [i == 4 for i in range(6)]}),
                        out, csv.writer(missing))
    assert (done, lost) == (5, 1)
    back = list(csv.reader(io.StringIO(out.getvalue())))
    assert [r[0] for r in back] == [i for i in ids if i != "lacks"]
    kept = scores[[0, 1, 2, 3, 4]]
    classes = kept.argmax(1).tolist() if width > 1 else [-1] * 5
    assert [int(r[1]) for r in back] == classes
    assert torch.allclose(torch.tensor([[float(v) for v in r[2:]] for r in back]), kept,
                          rtol=1e-6, atol=0)
    assert list(csv.reader(io.StringIO(missing.getvalue()))) == [["lacks", "c1"]]
