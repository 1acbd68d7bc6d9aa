"""The streams this node feeds its peers' subscriptions with (the sending side of Subscribe).

In exact-mode plain training every message of a batch is on the critical path. A message
pushed by its own call reaches the peer's training thread only after the peer's server has
dispatched the call (a poller thread, a worker thread, the message read, the inbox, the
training thread: five wake-ups, ~1.4 ms a batch here). So each party subscribes, at the
start of a round, to its peer's messages of that round, and reads that stream on its own
training thread; the peer's sends put their messages on the stream (one wake-up: the
stream's worker thread). docs/performance.md has the figures.

Order is kept across the two routes. A feed starts pending; the sender's first message in
its scope (this round's training kinds, one chunk at most) first sends a `route.stream`
notice the usual way, after every earlier message has been delivered, and from then on the
scope's messages go on the stream. A message outside the scope, or one the stream cannot
take, ends the stream first and then goes the usual way. The subscriber reads its inbox
before its stream and switches to the stream only at the notice, so it takes every message
in the order it was sent."""

from __future__ import annotations

import threading
from collections import deque

from wire import limits
from wire.chunking import CHUNK_BYTES

#: The notice that this node's next messages to the subscriber come on its stream.
ROUTE_STREAM = "route.stream"
#: The kinds a stream carries (exact-mode plain training; the round's end marker included).
STREAMED_KINDS = frozenset({"train.features", "train.gradient"})


class Feed:
    """One subscriber's stream of this node's messages of one round."""

    def __init__(self, subscriber: str, round_no: int) -> None:
        self.subscriber = subscriber
        self.round = round_no
        self._cond = threading.Condition()
        self._items: deque[bytes] = deque()
        self._bytes = 0
        #: The notice has gone out: the sender's messages in scope come here.
        self.live = False
        #: Nothing more will be put; the stream ends once the items left are taken.
        self.ended = False

    def in_scope(self, kind: str, round_no: int) -> bool:
        return kind in STREAMED_KINDS and round_no == self.round

    def put(self, data: bytes) -> bool:
        """Queue one serialized Payload for the stream; False if the stream has ended or
        holds more than a sender's queue may (the subscriber has stopped reading)."""
        if len(data) > CHUNK_BYTES:
            return False
        with self._cond:
            if self.ended or self._bytes + len(data) > limits.MAX_QUEUED_BYTES_PER_SENDER:
                return False
            self._items.append(data)
            self._bytes += len(data)
            self._cond.notify()
            return True

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify()

    def take(self, timeout: float) -> bytes | bool | None:
        """The next item; None once ended and empty; False if nothing came within `timeout`."""
        with self._cond:
            if not self._items and not self.ended:
                self._cond.wait(timeout)
            if self._items:
                data = self._items.popleft()
                self._bytes -= len(data)
                return data
            return None if self.ended else False


class Feeds:
    """The feeds of this node, at most one per subscriber: a new subscription of the same
    peer ends its previous one (the subscriber has stopped reading it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._feeds: dict[str, Feed] = {}

    def open(self, subscriber: str, round_no: int) -> Feed:
        feed = Feed(subscriber, round_no)
        with self._lock:
            previous = self._feeds.get(subscriber)
            self._feeds[subscriber] = feed
        if previous is not None:
            previous.end()
        return feed

    def current(self, subscriber: str) -> Feed | None:
        """The subscriber's open feed, if any."""
        with self._lock:
            feed = self._feeds.get(subscriber)
        return None if feed is None or feed.ended else feed

    def close(self, feed: Feed) -> None:
        feed.end()
        with self._lock:
            if self._feeds.get(feed.subscriber) is feed:
                del self._feeds[feed.subscriber]
