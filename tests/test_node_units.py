"""The node's parts one at a time, with fakes of the others: task runtime, watchdog, inbox,
checkpoint store, serde, tensor codec, chunking, the peer-message handler and the
coordinator link's report retries. No servers here (tests/test_node_limits.py has them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
import torch

from heteronn.v1 import common_pb2, coordinator_pb2, party_node_pb2
from party_node.errors import (
    BadMessage,
    NotAllowed,
    NotConsumed,
    NotReady,
    TaskFailed,
    TooLarge,
    WrongTask,
)
from party_node.runtime.links import (
    AbortSignal,
    Command,
    JoinInfo,
    Message,
    Participant,
    Report,
    TaskObserver,
)
from party_node.runtime.task import RunSettings, TaskRuntime
from party_node.runtime.watchdog import Watchdog
from party_node.transport import control_link
from party_node.transport.control_link import CoordinatorLink
from party_node.transport.handler import Limits, Opening, PeerMessageHandler
from party_node.transport.inbox import Inbox
from party_node.transport.node_state import NodeState
from party_node.transport.serde import (
    command_from_proto,
    message_from_payload,
    message_to_payload,
    participant_from_proto,
    participant_to_proto,
    report_to_proto,
)
from tests import synthetic as syn
from wire.chunking import payload_to_chunks
from wire.tensor_codec import TensorDecodeError, tensor_from_proto, tensor_to_proto

PARTICIPANTS = (Participant("h", "host", "fk-h"), Participant("c1", "collaborator", "fk-c1"))


# ---- task runtime ----------------------------------------------------------------------------
class FakeControl:
    def __init__(self, commands: Sequence[Command] = ()) -> None:
        self.commands = list(commands)
        self.reports: list[Report] = []
        self.joined: JoinInfo | None = None

    def join(self, info: JoinInfo) -> tuple[Participant, ...]:
        self.joined = info
        return PARTICIPANTS

    def next_command(self, timeout: float) -> Command:
        if not self.commands:
            raise TaskFailed("no more commands")
        return self.commands.pop(0)

    def report(self, report: Report) -> None:
        self.reports.append(report)

    def close(self) -> None:
        pass


class FakePeers:
    def connect(self, participants: Sequence[Participant]) -> None: ...
    def send(self, peer: str, message: Message) -> None: ...
    def set_window(self, messages: int) -> None: ...
    def flush(self) -> None: ...
    def receive(self, peer: str, timeout: float) -> Message:
        raise TaskFailed("no peers here")

    def psi_as_host(self, ids: Sequence[str], round_timeout: float) -> set[str]:
        return set(ids)

    def psi_as_collaborator(self, ids: Sequence[str], timeout: float) -> set[str]:
        return set(ids)

    def close(self) -> None: ...


class CountingObserver(TaskObserver):
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.phases: list[tuple[str, int]] = []

    def failed(self, kind: str) -> None:
        self.failures.append(kind)

    def phase(self, phase: str, round_no: int) -> None:
        self.phases.append((phase, round_no))


class Broken(syn.SynthCollaborator):
    def __init__(self, error: Exception) -> None:
        super().__init__("c1", 32, syn.Faults(""), schedule_timeout=60, calculation_timeout=120)
        self.error = error

    def load_local_ids(self):
        raise self.error


def _runtime(
    tmp_path: Path, scheduler, control: FakeControl
) -> tuple[TaskRuntime, CountingObserver]:
    observer = CountingObserver()
    settings = RunSettings(node_id="c1", task_id="t", workdir=tmp_path, advertise="a:1")
    runtime = TaskRuntime(scheduler, control, FakePeers(), settings, AbortSignal(), observer)
    return runtime, observer


def test_runtime_reports_and_counts_its_own_failure(tmp_path: Path) -> None:
    control = FakeControl([Command("PSI", participants=PARTICIPANTS)])
    runtime, observer = _runtime(tmp_path, Broken(RuntimeError("disk on fire")), control)
    with pytest.raises(TaskFailed, match="load_local_ids raised RuntimeError: disk on fire"):
        runtime.run()
    assert observer.failures == ["local_error"]
    assert control.joined is not None and control.joined.role == "collaborator"
    (error,) = [r.error for r in control.reports]
    assert error.startswith("collaborator 'c1', phase PSI: load_local_ids raised RuntimeError")
    assert (tmp_path / "c1" / "t" / "report.json").is_file()


def test_broadcast_reason_hides_looked_up_keys(tmp_path: Path) -> None:
    control = FakeControl([Command("PSI", participants=PARTICIPANTS)])
    runtime, _ = _runtime(tmp_path, Broken(KeyError("patient-4711")), control)
    with pytest.raises(TaskFailed) as failed:
        runtime.run()
    assert "patient-4711" not in failed.value.reason
    assert "patient-4711" not in control.reports[0].error
    assert "KeyError (the key is not shown to other parties" in control.reports[0].error


def test_runtime_follows_a_failure_broadcast(tmp_path: Path) -> None:
    control = FakeControl([Command("FAILED", reason="node 'h' (phase PSI): gone")])
    runtime, observer = _runtime(tmp_path, syn.SynthCollaborator("c1", 32, syn.Faults("")),
                                 control)
    with pytest.raises(TaskFailed, match="node 'h' \\(phase PSI\\): gone"):
        runtime.run()
    assert control.reports == [] and observer.phases == [("FAILED", 0)]


def test_non_str_ids_are_refused_without_showing_them(tmp_path: Path) -> None:
    class IntIds(syn.SynthCollaborator):
        def load_local_ids(self):
            return ["a", 123456789]

    control = FakeControl([Command("PSI", participants=PARTICIPANTS)])
    sched = IntIds("c1", 32, syn.Faults(""), schedule_timeout=60, calculation_timeout=120)
    runtime, observer = _runtime(tmp_path, sched, control)
    with pytest.raises(TaskFailed, match="returned a int at position 1; ids must be str"):
        runtime.run()
    assert "123456789" not in control.reports[0].error
    assert observer.failures == ["config_error"]


# ---- watchdog --------------------------------------------------------------------------------
def test_watchdog_fails_the_step_but_leaves_a_callers_process_alone() -> None:
    reasons: list[str] = []
    done = threading.Event()

    def run() -> None:
        watchdog = Watchdog(0.3, lambda msg: reasons.append(msg) or msg)
        assert not watchdog.owns_process  # a thread of someone else's process
        with watchdog.local("train_a_batch (batch 3)"):
            time.sleep(1.0)  # the main thread would get SIGINT if the watchdog sent one
        watchdog.close()
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert done.is_set()
    assert reasons == [
        "train_a_batch (batch 3) took longer than calculation_timeout=0.3 s; make the local "
        "work faster or raise calculation_timeout"
    ]


def test_watchdog_names_the_step_that_raised() -> None:
    watchdog = Watchdog(10, lambda msg: msg)
    with pytest.raises(ValueError), watchdog.local("split_dataset"):
        raise ValueError("x")
    assert watchdog.failed_in == "split_dataset"
    watchdog.close()


# ---- inbox -----------------------------------------------------------------------------------
def test_inbox_is_fifo_per_sender_and_bounded() -> None:
    inbox = Inbox(AbortSignal(), max_bytes_per_sender=100)
    for b in range(2):
        inbox.put("c1", Message("k", 1, b), size=50)
    inbox.put("c2", Message("k", 1, 9), size=50)
    with pytest.raises(TooLarge, match="'c1' has 100 bytes queued"):
        inbox.put("c1", Message("k", 1, 2), size=10, wait_s=0.2)
    inbox.put("c1", Message("k", 1, 2), size=500) if False else None
    assert [inbox.get("c1", 1, "c1").batch for _ in range(2)] == [0, 1]
    inbox.put("c1", Message("k", 1, 3), size=500)  # an empty queue takes any one message
    assert inbox.get("c2", 1, "c2").batch == 9


def test_inbox_get_ends_on_abort_and_names_the_silent_peer() -> None:
    abort = AbortSignal()
    inbox = Inbox(abort)
    with pytest.raises(TaskFailed, match=r"collaborator 'c1' at x:1 sent nothing for 0\.2 s"):
        inbox.get("c1", 0.2, "collaborator 'c1' at x:1")
    threading.Timer(0.2, abort.set, args=("the host failed",)).start()
    with pytest.raises(TaskFailed, match="the host failed"):
        inbox.get("c1", 10, "c1")


# ---- serde, tensor codec, chunking -------------------------------------------------------------
def test_message_payload_round_trip() -> None:
    msg = Message(
        kind="train.features", round=2, batch=5,
        tensors={"x": torch.randn(3, 4), "i": torch.arange(6).reshape(2, 3)},
        blobs={"ct": b"\x00\x01"}, end_of_stream=False,
    )
    back = message_from_payload(message_to_payload(msg, "t", "c1"))
    assert (back.kind, back.round, back.batch, back.sender) == ("train.features", 2, 5, "c1")
    assert torch.equal(back.tensors["x"], msg.tensors["x"])
    assert torch.equal(back.tensors["i"], msg.tensors["i"]) and back.blobs == {"ct": b"\x00\x01"}


def test_control_records_round_trip() -> None:
    p = Participant("c1", "collaborator", "fk", "a:1", 3)
    assert participant_from_proto(participant_to_proto(p)) == p
    cmd = coordinator_pb2.PhaseCommand(
        task_id="t", phase=common_pb2.PHASE_TRAIN, round=4, reason="",
        participants=[participant_to_proto(p)], resume_round=2, resume_batch=3, deadline_unix_ms=9,
    )
    assert command_from_proto(cmd) == Command(
        "TRAIN", 4, "", (p,), resume_round=2, resume_batch=3, deadline_unix_ms=9
    )
    report = Report("SPLIT", train_size=10, test_size=2, split_digest="d", metrics={"a": 1.0})
    wire = report_to_proto("t", "c1", report)
    assert (wire.phase, wire.train_size, dict(wire.metrics)) == (
        common_pb2.PHASE_SPLIT, 10, {"a": 1.0}
    )


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(2, 3),
        torch.randn(4, dtype=torch.float64),
        torch.randn(3, 2).to(torch.bfloat16),
        torch.randn(5).to(torch.float16),
        torch.arange(6, dtype=torch.int64).reshape(3, 2),
        torch.tensor([True, False]),
        torch.zeros(0, 7),
    ],
)
def test_tensor_codec_round_trips(tensor: torch.Tensor) -> None:
    back = tensor_from_proto(tensor_to_proto(tensor))
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)


@pytest.mark.parametrize(
    "fields, problem",
    [
        (dict(dtype="complex64", shape=[1], data=b"\x00" * 8), "unknown dtype 'complex64'"),
        (dict(dtype="float32", shape=[-1], data=b""), "negative dimension"),
        (dict(dtype="float32", shape=[2, 2], data=b"\x00" * 12), "carries 12 bytes"),
        (dict(dtype="float32", shape=[1] * 9, data=b"\x00" * 4), "9 dimensions; at most 8"),
        (dict(dtype="float32", shape=[2**32, 2**32], data=b""), "elements; at most"),
        (dict(dtype="float32", shape=[1], data=b"\x00\x00\xc0\x7f"), "NaN or infinite"),
    ],
)
def test_tensor_codec_refuses(fields: dict, problem: str) -> None:
    with pytest.raises(TensorDecodeError, match=problem):
        tensor_from_proto(common_pb2.Tensor(**fields))


@pytest.mark.parametrize("rows", [0, 1, 5000])
def test_chunking_round_trip(rows: int) -> None:
    payload = message_to_payload(Message("k", 1, 0, tensors={"x": torch.ones(rows, 64)}), "t", "c")
    chunks = list(payload_to_chunks(payload, party_node_pb2.FeatureExchangeRequest, 1000))
    data = payload.SerializeToString()
    assert chunks[0].header == payload.header and chunks[0].total_bytes == len(data)
    assert all(not c.HasField("header") and c.total_bytes == 0 for c in chunks[1:])
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert b"".join(c.data for c in chunks) == data
    assert len(chunks) == max(1, -(-len(data) // 1000))


# ---- handler ---------------------------------------------------------------------------------
def _handler(role: str = "host", joined: bool = True, **limits) -> PeerMessageHandler:
    state = NodeState(node_id="h" if role == "host" else "c1", task_id="t", role=role,
                      abort=AbortSignal())
    if joined:
        state.set_participants(PARTICIPANTS)
    return PeerMessageHandler(state, Limits(ready_wait_s=0.1, **limits))


def _opening(sender: str = "c1", task: str = "t", total: int = 100, kind: str = "train.features",
             remaining: float | None = 30.0, names: frozenset[str] = frozenset()) -> Opening:
    header = common_pb2.Header(task_id=task, sender=sender, kind=kind, round=1)
    return Opening("FeatureExchange", header, total, names, remaining)


@pytest.mark.parametrize(
    "handler, opening, error, problem",
    [
        (lambda: _handler("collaborator"), _opening(task="x"), NotConsumed, "is a collaborator"),
        (lambda: _handler(), _opening(task="other"), WrongTask, "not 'other'"),
        (lambda: _handler(), _opening(remaining=None), BadMessage, "no deadline"),
        (lambda: _handler(joined=False), _opening(), NotReady, "has not joined"),
        (lambda: _handler(), _opening(sender="mallory"), NotAllowed, "not a participant"),
        (lambda: _handler(), _opening(sender="h"), NotAllowed, "from a collaborator"),
        (lambda: _handler(), _opening(names=frozenset({"c2"})), NotAllowed, "claims to come"),
        (lambda: _handler(), _opening(total=0), BadMessage, "total_bytes=0"),
        (lambda: _handler(max_payload_bytes=99), _opening(), TooLarge, "max_payload_bytes"),
    ],
)
def test_handler_decides_from_the_first_chunk(handler, opening, error, problem) -> None:
    with pytest.raises(error, match=problem):
        handler().open(opening)


def test_handler_checks_the_body_against_the_announcement() -> None:
    handler = _handler()
    message = Message("train.features", 1, 1, tensors={"x": torch.ones(2)})
    payload = message_to_payload(message, "t", "c1")
    body = payload.SerializeToString()
    opening = Opening("FeatureExchange", payload.header, len(body), frozenset(), 30.0)
    peer = handler.open(opening)
    with pytest.raises(BadMessage, match=r"announced .* but sent"):
        handler.accept(opening, peer, body[:-1])
    other = common_pb2.Payload()
    other.CopyFrom(payload)
    other.header.batch = 2  # same size on the wire, another batch than the first chunk said
    with pytest.raises(BadMessage, match="header differs"):
        handler.accept(opening, peer, other.SerializeToString())
    handler.accept(opening, peer, body)
    handler.close(opening)
    assert handler.state.inbox.get("c1", 1, "c1").tensors["x"].shape == (2,)
    assert sum(handler._open.values()) == 0


# ---- coordinator link ------------------------------------------------------------------------
class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection refused"


class FlakyClient:
    """Unreachable for `down_s` seconds (a coordinator restarting), then fine."""

    def __init__(self, down_s: float) -> None:
        self.until = time.monotonic() + down_s
        self.delivered: list[coordinator_pb2.ReportPhaseRequest] = []

    def report(self, request, timeout=None) -> None:
        if time.monotonic() < self.until:
            raise Unavailable()
        self.delivered.append(request)

    def close(self) -> None: ...


def _link(down_s: float, patience: float) -> tuple[CoordinatorLink, FlakyClient]:
    link = CoordinatorLink("c:1", "t", "c1", None, AbortSignal())
    link._client.close()
    client = FlakyClient(down_s)
    link._client = client  # type: ignore[assignment]
    link._patience = patience
    return link, client


def test_reports_wait_out_a_coordinator_restart_up_to_schedule_timeout() -> None:
    link, client = _link(down_s=3.5, patience=10)
    link.report(Report("TRAIN", round=1, checkpoint_round=1))
    assert [r.phase for r in client.delivered] == [common_pb2.PHASE_TRAIN]
    link, client = _link(down_s=30, patience=1)
    with pytest.raises(TaskFailed, match="rejected the TRAIN report of 'c1': UNAVAILABLE"):
        link.report(Report("TRAIN", round=1))


def test_error_reports_give_up_sooner(monkeypatch) -> None:
    monkeypatch.setattr(control_link, "ERROR_REPORT_PATIENCE_S", 0.5)
    link, _ = _link(down_s=30, patience=60)
    started = time.monotonic()
    with pytest.raises(TaskFailed):
        link.report(Report("PSI", error="boom"))
    assert time.monotonic() - started < 3
