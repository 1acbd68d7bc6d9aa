"""What a node decides about a peer's message, with no gRPC in sight: may this caller send
this kind of message to this node now, is the body what the header announced, and where
does the decoded message go. The servicer translates RPCs into calls here and `NodeError`s
back into status codes; the checks live here so they can be tested without a server.

Order matters: everything that needs only the first chunk (role, task, sender, identity,
size) is decided before one more byte of the body is read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from heteronn.v1 import common_pb2
from party_node.errors import (
    BadMessage,
    NotAllowed,
    NotConsumed,
    NotReady,
    TooLarge,
    WrongTask,
)
from party_node.runtime.links import Participant
from party_node.transport.feeds import Feed
from party_node.transport.node_state import NodeState
from party_node.transport.replies import REPLY_KINDS
from party_node.transport.serde import message_from_payload
from wire import limits
from wire.chunking import CHUNK_BYTES
from wire.limits import shown
from wire.tensor_codec import TensorDecodeError

#: gRPC reports a call without a deadline as ~2**63 ns remaining; anything past this is none.
NO_DEADLINE_S = 1e9

#: Which role consumes each data RPC, and which role sends it.
CONSUMER = {"FeatureExchange": "host", "GradientReturn": "collaborator"}
SENDER = {"FeatureExchange": "collaborator", "GradientReturn": "host"}


@dataclass(frozen=True)
class Limits:
    """Bounds on what peers may send this node (node settings set them; defaults and docs in
    wire.limits)."""

    #: Largest serialized Payload accepted in one FeatureExchange/GradientReturn call...
    max_payload_bytes: int = limits.MAX_PAYLOAD_BYTES
    #: ...unless its kind has its own limit here.
    max_payload_bytes_by_kind: Mapping[str, int] = field(default_factory=dict)
    #: Bytes of one sender's messages the runtime has not taken yet; beyond it the sender's
    #: next call waits (backpressure), until its deadline.
    max_queued_bytes_per_sender: int = limits.MAX_QUEUED_BYTES_PER_SENDER
    #: Data calls one sender may have open at once.
    max_streams_per_sender: int = limits.MAX_STREAMS_PER_SENDER
    #: The longest deadline a peer's call may carry; a call without one is refused.
    max_call_s: float = limits.MAX_CALL_S
    #: How long a message from a peer waits for this node to finish joining.
    ready_wait_s: float = 10.0
    #: How long the host's Psi call waits for this collaborator's load_local_ids().
    psi_wait_s: float = 60.0
    #: How long a collaborator's call that asked for the batch's gradient waits for it here
    #: (exact mode); a later gradient travels by its own GradientReturn call.
    reply_wait_s: float = 2.0

    def payload_limit(self, kind: str) -> int:
        return self.max_payload_bytes_by_kind.get(kind, self.max_payload_bytes)


@dataclass(frozen=True)
class Opening:
    """The first chunk of a data RPC, as the handler needs it."""

    rpc: str
    header: common_pb2.Header
    total_bytes: int
    #: Names in the caller's verified certificate (empty without mutual TLS).
    identities: frozenset[str]
    #: Seconds left until the caller's deadline (None: the caller set none).
    time_remaining: float | None = None
    #: True once the caller has gone (cancelled, deadline passed, connection lost).
    caller_gone: Callable[[], bool] = lambda: False
    #: The kind of answer the caller waits for on this call (FeatureExchangeOne only).
    reply_kind: str = ""


class PeerMessageHandler:
    """Admits peers' data messages into the node's inbox."""

    def __init__(self, state: NodeState, limits: Limits | None = None) -> None:
        self.state = state
        self.limits = limits or Limits()
        self._open: Counter[str] = Counter()
        self._open_lock = threading.Lock()

    def check_deadline(self, rpc: str, time_remaining: float | None) -> None:
        """Every call must end: a peer's call needs a deadline, at most max_call_s away."""
        most = self.limits.max_call_s
        if time_remaining is None or time_remaining > NO_DEADLINE_S:
            raise BadMessage(
                f"{rpc}: the call has no deadline; set one (at most {most:g} s) so it cannot "
                "hold this node's worker forever"
            )
        if time_remaining > most + 1:
            raise BadMessage(
                f"{rpc}: the call's deadline is {time_remaining:.0f} s away; this node accepts "
                f"at most {most:g} s (node setting max_call_s)"
            )

    # ---- before the body ----------------------------------------------------------------------
    def open(self, opening: Opening) -> Participant:
        """Check everything the first chunk says; returns the sending participant."""
        st, rpc, h = self.state, opening.rpc, opening.header
        consumer = CONSUMER[rpc]
        if st.role != consumer:
            raise NotConsumed(
                f"node '{st.node_id}' is a {st.role}; {rpc} carries messages to the "
                f"{consumer} — send them to the {consumer}'s address"
            )
        if h.task_id != st.task_id:
            raise WrongTask(f"node '{st.node_id}' runs task '{st.task_id}', not {shown(h.task_id)}")
        self.check_deadline(rpc, opening.time_remaining)
        if not st.wait_ready(min(self.limits.ready_wait_s, opening.time_remaining or 0)):
            raise NotReady(f"node '{st.node_id}' has not joined task '{st.task_id}' yet; retry")
        peer = check_sender(st, h.sender, opening.identities, SENDER[rpc], rpc)
        if opening.reply_kind and REPLY_KINDS.get(h.kind) != opening.reply_kind:
            answers = ", ".join(f"{v!r} to {k!r}" for k, v in REPLY_KINDS.items())
            raise BadMessage(
                f"{rpc} from '{h.sender}' waits for {shown(opening.reply_kind)} in answer to "
                f"{shown(h.kind)}; a call may wait only for {answers}"
            )
        if opening.total_bytes <= 0:
            raise BadMessage(
                f"{rpc} from '{h.sender}' announced total_bytes={opening.total_bytes}; the first "
                "chunk must carry the serialized Payload's size"
            )
        most = self.limits.payload_limit(h.kind)
        if opening.total_bytes > most:
            setting = (
                "max_payload_bytes_by_kind" if h.kind in self.limits.max_payload_bytes_by_kind
                else "max_payload_bytes"
            )
            raise TooLarge(
                f"{peer.role} '{h.sender}' announced {opening.total_bytes} bytes for "
                f"{shown(h.kind)}; this node accepts at most {most} per message (node setting "
                f"{setting})"
            )
        self._count_open(h.sender, rpc)
        return peer

    def close(self, opening: Opening) -> None:
        """The call `open` admitted has ended (however it ended)."""
        self._uncount_open(opening.header.sender)

    def _count_open(self, sender: str, rpc: str) -> None:
        with self._open_lock:
            if self._open[sender] >= self.limits.max_streams_per_sender:
                raise TooLarge(
                    f"{rpc}: '{sender}' has {self._open[sender]} calls open already; this "
                    f"node takes at most {self.limits.max_streams_per_sender} at once (node "
                    "setting max_streams_per_sender)"
                )
            self._open[sender] += 1

    def _uncount_open(self, sender: str) -> None:
        with self._open_lock:
            self._open[sender] -= 1
            if self._open[sender] <= 0:
                del self._open[sender]

    def open_psi(
        self,
        header: common_pb2.Header,
        identities: frozenset[str],
        caller_gone: Callable[[], bool],
        time_remaining: float | None = None,
    ) -> Any:
        """Check the first PSI chunk: only this task's host may run PSI, and only against a
        collaborator. Returns the collaborator's PSI session once it is open."""
        st = self.state
        if st.role != "collaborator":
            raise NotConsumed(
                f"node '{st.node_id}' is the host; the host runs PSI against its collaborators "
                "and accepts no Psi call"
            )
        if header.task_id != st.task_id:
            raise WrongTask(
                f"node '{st.node_id}' runs task '{st.task_id}', not {shown(header.task_id)}"
            )
        self.check_deadline("Psi", time_remaining)
        if not st.wait_ready(self.limits.ready_wait_s):
            raise NotReady(f"node '{st.node_id}' has not joined task '{st.task_id}' yet; retry")
        check_sender(st, header.sender, identities, "host", "Psi")

        def stop() -> bool:
            return st.abort.is_set() or caller_gone()

        if not wait_for(st.psi_ready, stop, self.limits.psi_wait_s):
            raise NotReady(f"node '{st.node_id}' is not ready for PSI yet; retry")
        return st.psi_session

    def open_feed(self, opening: Opening) -> Feed:
        """Check a Subscribe call (this task, a participant of the other role that is the
        caller, a bounded deadline, its open calls); returns the feed its stream reads."""
        st, h = self.state, opening.header
        if h.task_id != st.task_id:
            raise WrongTask(f"node '{st.node_id}' runs task '{st.task_id}', not {shown(h.task_id)}")
        self.check_deadline("Subscribe", opening.time_remaining)
        if not st.wait_ready(min(self.limits.ready_wait_s, opening.time_remaining or 0)):
            raise NotReady(f"node '{st.node_id}' has not joined task '{st.task_id}' yet; retry")
        other = "collaborator" if st.role == "host" else "host"
        check_sender(st, h.sender, opening.identities, other, "Subscribe")
        self._count_open(h.sender, opening.rpc)
        return st.feeds.open(h.sender, h.round)

    def close_feed(self, feed: Feed) -> None:
        """The Subscribe call `open_feed` admitted has ended (however it ended)."""
        self.state.feeds.close(feed)
        self._uncount_open(feed.subscriber)

    # ---- the body -----------------------------------------------------------------------------
    def accept(self, opening: Opening, peer: Participant, body: bytes) -> bytes | None:
        """Parse and check the body the header announced; queue the message for the runtime.
        With `opening.reply_kind`, wait (bounded) for the runtime's answer and return it
        serialized, or None if it did not come in time (it then travels by its own call)."""
        started = time.monotonic()
        h = opening.header
        if len(body) != opening.total_bytes:
            raise BadMessage(
                f"{peer.role} '{h.sender}' announced {opening.total_bytes} bytes for {h.kind} "
                f"but sent {len(body)}"
            )
        payload = self._parse(peer, h.sender, h.kind, body)
        if payload.header != h:
            raise BadMessage(
                f"{peer.role} '{h.sender}' sent a Payload whose header differs from its first "
                "chunk's header"
            )
        message = self._decode(peer, payload)
        slot = None
        if opening.reply_kind:
            slot = self.state.replies.expect(h.sender, opening.reply_kind, h.round, h.batch)
            if slot is None:
                raise TooLarge(
                    f"{peer.role} '{h.sender}' already has a call waiting for an answer here; "
                    "one at a time: wait for that call's answer before sending the next batch"
                )
        # Wait for room (backpressure) but answer before the caller's deadline, so it hears
        # RESOURCE_EXHAUSTED with the reason rather than DEADLINE_EXCEEDED.
        remaining = opening.time_remaining or 0.0
        margin = min(1.0, remaining / 2)
        try:
            self.state.inbox.put(
                h.sender, message, h.seq, len(body), remaining - margin, opening.caller_gone
            )
        except BaseException:
            if slot is not None:
                self.state.replies.wait(slot, 0.0, lambda: True)  # withdraw it
            raise
        if slot is None:
            return None
        left = remaining - margin - (time.monotonic() - started)
        return self.state.replies.wait(
            slot,
            min(self.limits.reply_wait_s, max(0.0, left)),
            lambda: opening.caller_gone() or self.state.abort.is_set(),
        )

    def admit_reply(self, sender: str, kind: str, round_no: int, batch: int, body: bytes) -> None:
        """The answer `sender` gave on this node's own call (FeatureExchangeOne's `reply`):
        the checks of a GradientReturn from it, then into the inbox like one."""
        self._admit(sender, body, (kind, round_no, batch))

    def admit_streamed(self, sender: str, body: bytes) -> None:
        """A message from the stream this node subscribed to at `sender` (Subscribe): the
        checks of a FeatureExchange/GradientReturn from it, then into the inbox like one."""
        self._admit(sender, body, None)

    def _admit(self, sender: str, body: bytes, answer: tuple[str, int, int] | None) -> None:
        """Check a Payload `sender` gave on one of this node's own calls: size (by the kind
        it must be, else by the kind it says), form, task and sender, and (`answer`) the
        kind, round and batch it must be; queue it."""
        st = self.state
        peer = st.participants[sender]
        # Before parsing: a stream carries at most one chunk (transport.feeds).
        cap = self.limits.payload_limit(answer[0]) if answer else CHUNK_BYTES
        payload = None
        if len(body) <= cap:
            payload = self._parse(peer, sender, answer[0] if answer else "a message", body)
        kind, round_no, batch = answer or (
            (payload.header.kind, payload.header.round, payload.header.batch) if payload
            else ("a message", 0, 0)
        )
        most = min(cap, self.limits.payload_limit(kind))
        if payload is None or len(body) > most:
            raise TooLarge(
                f"{peer.role} '{sender}' sent {len(body)} bytes of {shown(kind)}; this node "
                f"accepts at most {most} per message"
            )
        h = payload.header
        if (h.task_id, h.sender, h.kind, h.round, h.batch) != (
            st.task_id, sender, kind, round_no, batch
        ):
            raise BadMessage(
                f"{peer.role} '{sender}' sent {shown(h.kind)} of round {h.round} batch "
                f"{h.batch} from {shown(h.sender)} of task {shown(h.task_id)}; expected "
                f"{kind} of round {round_no} batch {batch} from it of task '{st.task_id}'"
            )
        st.inbox.put(sender, self._decode(peer, payload), h.seq, len(body))

    @staticmethod
    def _parse(peer: Participant, sender: str, kind: str, body: bytes) -> common_pb2.Payload:
        payload = common_pb2.Payload()
        try:
            payload.ParseFromString(body)
        except Exception:  # protobuf's DecodeError, and its C implementation's RuntimeError
            raise BadMessage(
                f"{peer.role} '{sender}' sent {shown(kind)} that is not a valid Payload"
            ) from None
        return payload

    @staticmethod
    def _decode(peer: Participant, payload: common_pb2.Payload) -> Any:
        h = payload.header
        try:
            return message_from_payload(payload)
        except TensorDecodeError as exc:
            raise BadMessage(
                f"{peer.role} '{h.sender}' sent a bad tensor in {h.kind} (round {h.round} "
                f"batch {h.batch}): {exc}"
            ) from None


def check_sender(
    state: NodeState, sender: str, identities: Iterable[str], role: str, what: str
) -> Participant:
    """The participant `sender`, if it is one, has `role`, and (under mutual TLS) is the
    caller; NotAllowed otherwise."""
    peer = state.participants.get(sender)
    if peer is None:
        raise NotAllowed(f"{shown(sender)} is not a participant of task '{state.task_id}'")
    names = set(identities)
    if names and sender not in names:
        raise NotAllowed(
            f"the TLS certificate of this caller names {sorted(names)}, but the message "
            f"claims to come from '{sender}'"
        )
    if peer.role != role:
        raise NotAllowed(f"{what} is for messages from a {role}; '{sender}' is the {peer.role}")
    return peer


def wait_for(ready: threading.Event, stop: Callable[[], bool], timeout: float) -> bool:
    """Wait for `ready`, giving up when `stop()` says so or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if stop() or time.monotonic() > deadline:
            return False
    return True
