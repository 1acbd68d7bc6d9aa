"""The PartyNodeService gRPC servicer: translates each RPC into calls on the pure handler
(`transport.handler`) and the handler's `NodeError`s into status codes. No decisions here
beyond reading the stream; it knows nothing about models."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from heteronn.v1 import common_pb2, party_node_pb2, party_node_pb2_grpc
from party_node.errors import BadMessage
from party_node.transport.handler import Opening, PeerMessageHandler
from wire.peer_auth import Trust, tls_identities
from wire.status_error import abort_with, status_call

log = logging.getLogger("heteronn")
T = TypeVar("T")

#: How often a Subscribe stream with nothing to send looks at its caller and the task.
_POLL_S = 0.2

SERVICE_NAME = party_node_pb2.DESCRIPTOR.services_by_name["PartyNodeService"].full_name


def _call(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    return status_call(context, fn, log)


def _read_body(first: object, rest: Iterator[object], total: int) -> bytes:
    """The Payload bytes of a data call: the first chunk's data and the rest, never more than
    the `total` announced (checked by the handler against this node's limit)."""
    parts = [first.data]  # type: ignore[attr-defined]
    size = len(parts[0])
    last = first.last  # type: ignore[attr-defined]
    for chunk in rest:
        if last:
            raise BadMessage("the sender went on after the chunk marked last")
        size += len(chunk.data)
        if size > total:
            raise BadMessage(f"the sender sent more than the {total} bytes it announced")
        parts.append(chunk.data)
        last = chunk.last
    if not last:
        raise BadMessage("the stream ended before its last chunk (the sender stopped mid-message)")
    return b"".join(parts)


class PartyNodeServicer(party_node_pb2_grpc.PartyNodeServiceServicer):
    def __init__(self, handler: PeerMessageHandler, trust: Trust | None = None) -> None:
        self.handler = handler
        self.trust = trust

    def _deliver(self, rpc: str, chunks: Iterator[object], context: grpc.ServicerContext) -> None:
        first = next(chunks, None)
        if first is None:
            abort_with(context, BadMessage(f"{rpc}: the call carried no chunk"))
        opening = self._opening(rpc, first.header, first.total_bytes, context)  # type: ignore[attr-defined]
        peer = _call(context, lambda: self.handler.open(opening))
        try:
            body = _call(context, lambda: _read_body(first, chunks, opening.total_bytes))
            _call(context, lambda: self.handler.accept(opening, peer, body))
        finally:
            self.handler.close(opening)

    def _deliver_one(
        self, rpc: str, request: object, context: grpc.ServicerContext, reply_kind: str = ""
    ) -> bytes | None:
        """A Payload of one chunk in a single request (FeatureExchangeOne, GradientReturnOne):
        the streamed call's checks, with the size announced by the data itself. Returns the
        answer the caller waits for (`reply_kind`), if it came in time."""
        body = request.data  # type: ignore[attr-defined]
        opening = self._opening(rpc, request.header, len(body), context, reply_kind)  # type: ignore[attr-defined]
        peer = _call(context, lambda: self.handler.open(opening))
        try:
            return _call(context, lambda: self.handler.accept(opening, peer, body))
        finally:
            self.handler.close(opening)

    def _opening(
        self,
        rpc: str,
        header: common_pb2.Header,
        total: int,
        context: grpc.ServicerContext,
        reply_kind: str = "",
    ) -> Opening:
        return Opening(
            rpc=rpc,
            header=header,
            total_bytes=total,
            identities=frozenset(tls_identities(context, self.trust)),
            time_remaining=context.time_remaining(),
            caller_gone=lambda: not context.is_active(),
            reply_kind=reply_kind,
        )

    def FeatureExchange(self, request_iterator, context):
        self._deliver("FeatureExchange", iter(request_iterator), context)
        return party_node_pb2.FeatureExchangeResponse()

    def GradientReturn(self, request_iterator, context):
        self._deliver("GradientReturn", iter(request_iterator), context)
        return party_node_pb2.GradientReturnResponse()

    def FeatureExchangeOne(self, request, context):
        reply = self._deliver_one("FeatureExchange", request, context, request.reply_kind)
        return party_node_pb2.FeatureExchangeOneResponse(reply=reply or b"")

    def GradientReturnOne(self, request, context):
        self._deliver_one("GradientReturn", request, context)
        return party_node_pb2.GradientReturnOneResponse()

    def Psi(self, request_iterator, context):
        messages = iter(request_iterator)
        first = next(messages, None)
        if first is None:
            abort_with(context, BadMessage("Psi: the call carried no message"))
        identities = frozenset(tls_identities(context, self.trust))

        def caller_gone() -> bool:
            return not context.is_active()

        remaining = context.time_remaining()
        session = _call(
            context,
            lambda: self.handler.open_psi(first.header, identities, caller_gone, remaining),
        )
        yield from session.handle(itertools.chain([first], messages), context)

    def Subscribe(self, request, context):
        """The caller's stream of this node's messages to it (transport.feeds): items as this
        node sends them, until the feed ends, the caller goes, or the deadline nears."""
        opening = self._opening("Subscribe", request.header, 0, context)
        feed = _call(context, lambda: self.handler.open_feed(opening))
        remaining = opening.time_remaining or 0.0
        end_at = time.monotonic() + remaining - min(1.0, remaining / 2)
        abort = self.handler.state.abort
        try:
            while True:
                item = feed.take(_POLL_S)
                if item is None:
                    return
                if item is False:
                    if not context.is_active() or abort.is_set():
                        return
                    if time.monotonic() > end_at:
                        feed.end()  # the items left still go, then the stream ends in time
                    continue
                yield party_node_pb2.SubscribeResponse(data=item)
        finally:
            self.handler.close_feed(feed)

    def GetStatus(self, request, context):
        st = self.handler.state
        return party_node_pb2.GetStatusResponse(
            node_id=st.node_id,
            task_id=st.task_id,
            phase=common_pb2.Phase.Value(f"PHASE_{st.phase}") if st.phase else 0,
            round=st.round,
        )
