"""What a node's servicer needs to know about its task: its own role, who may talk to it,
where incoming messages go, and what it is doing now. Filled by the runtime's links once the
node has joined."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from party_node.runtime.links import AbortSignal, Participant
from party_node.transport.feeds import Feeds
from party_node.transport.inbox import Inbox
from party_node.transport.replies import Replies
from wire import limits


@dataclass
class NodeState:
    node_id: str
    task_id: str
    #: "host" or "collaborator": decides which RPCs this node consumes.
    role: str
    abort: AbortSignal
    #: Bytes of one sender's messages the runtime has not taken yet (see Inbox).
    max_queued_bytes_per_sender: int = limits.MAX_QUEUED_BYTES_PER_SENDER
    inbox: Inbox = field(init=False)
    #: Peers' calls waiting for this node's answer to their message (exact-mode training).
    replies: Replies = field(default_factory=Replies)
    #: Peers' streams of this node's messages to them (exact-mode training: Subscribe).
    feeds: Feeds = field(default_factory=Feeds)
    participants: dict[str, Participant] = field(default_factory=dict)
    #: The runtime's phase ("PSI", "TRAIN", ...; empty before it has joined) and round.
    phase: str = ""
    round: int = 0
    _ready: threading.Event = field(default_factory=threading.Event)
    psi_session: Any = None
    psi_ready: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.inbox = Inbox(self.abort, self.max_queued_bytes_per_sender)

    def set_participants(self, participants: tuple[Participant, ...]) -> None:
        self.participants = {p.node_id: p for p in participants}
        self._ready.set()

    def known_participants(self, wait: float) -> set[str]:
        """The task's node ids; a peer calling before this node has joined waits (bounded)
        instead of being refused."""
        self.wait_ready(wait)
        return set(self.participants)

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)
