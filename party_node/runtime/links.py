"""What the runtime needs from the outside world, as interfaces. `party_node.transport`
implements them over gRPC; the runtime never imports grpc."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Message:
    """One data message between parties (maps onto proto Payload)."""

    kind: str
    round: int
    batch: int
    sender: str = ""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    end_of_stream: bool = False
    #: Host → collaborator, on a batch's last message: every party checkpoints after it.
    checkpoint: bool = False


@dataclass(frozen=True)
class Participant:
    node_id: str
    role: str  # "host" | "collaborator"
    feature_key: str
    address: str = ""
    checkpoint_round: int = 0
    checkpoint_batch: int = 0


@dataclass(frozen=True)
class Command:
    """A phase command from the coordinator."""

    phase: str  # WAITING_FOR_NODES, PSI, SPLIT, TRAIN, TEST, FINISHED, FAILED
    round: int = 0
    reason: str = ""
    participants: tuple[Participant, ...] = ()
    resume_round: int = 0
    #: Batches of round resume_round + 1 that the resume checkpoint already holds.
    resume_batch: int = 0
    deadline_unix_ms: int = 0
    attempt: int = 0


@dataclass
class Report:
    """A node's result for a phase."""

    phase: str
    round: int = 0
    error: str = ""
    train_size: int = 0
    test_size: int = 0
    split_digest: str = ""
    finished: bool = False
    test_requested: bool = False
    checkpoint_round: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JoinInfo:
    """What this node tells the coordinator about itself."""

    node_id: str
    role: str
    feature_key: str
    address: str
    checkpoint_round: int
    checkpoint_batch: int
    #: The node restarts to resume: the coordinator starts a new attempt if need be.
    recover: bool
    schedule_timeout: float
    calculation_timeout: float
    agreement: dict[str, str]


class ControlLink(Protocol):
    """The coordinator, as the runtime sees it."""

    def join(self, info: JoinInfo) -> tuple[Participant, ...]: ...
    def next_command(self, timeout: float) -> Command: ...
    def report(self, report: Report) -> None: ...
    def close(self) -> None: ...


class PeerLink(Protocol):
    """The other parties, as the runtime sees them."""

    def connect(self, participants: Sequence[Participant]) -> None: ...
    def send(self, peer: str, message: Message, wait: bool = False, reply: str = "") -> None:
        """Deliver after everything sent to `peer` before (see `set_window`). `wait`: return
        once the peer has it, whatever the window (a sender with nothing else to do meanwhile
        saves the per-call machinery of a posted send). `reply`: the kind of the peer's
        answer to this message, which the send may bring back with it (exact mode: one call
        per batch); `receive` returns it either way."""

    def set_window(self, messages: int) -> None:
        """Let up to `messages` sends per peer be on their way at once; 0 (the default):
        each send returns once the peer has the message."""

    def flush(self) -> None:
        """Return once every message sent so far has been delivered; raise if one was not."""

    def receive(self, peer: str, timeout: float) -> Message: ...
    def subscribe(self, peer: str, round_no: int) -> None:
        """Let `peer` stream its training messages of round `round_no` to this party instead
        of calling with each (exact mode: fewer thread hand-offs per batch); `receive` takes
        them either way, in the order sent."""

    def psi_as_host(self, ids: Sequence[str], round_timeout: float) -> set[str]: ...
    def psi_as_collaborator(self, ids: Sequence[str], timeout: float) -> set[str]: ...
    def close(self) -> None: ...


class TaskObserver:
    """What the runtime tells monitoring (Prometheus, via the transport). No-op here."""

    def phase(self, phase: str, round_no: int) -> None: ...
    def batch(self, rows: int, stage: str) -> None: ...
    def psi(self, seconds: float, local: int, intersection: int) -> None: ...
    def test(self, metrics: dict[str, float]) -> None: ...
    def he(self, op: str, seconds: float) -> None: ...
    def label_leak(self, peer: str, scores: dict[str, float], seconds: float) -> None: ...
    def failed(self, kind: str) -> None: ...


class AbortSignal:
    """Set once when the task must stop (failure broadcast or local error); every wait checks it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
