"""Server interceptors that rewrite every method handler with one function, for the threaded
server and for the asyncio server (whose interceptors are coroutines). The request guard and
the metrics use them, so each states only how it wraps a handler."""

from __future__ import annotations

from collections.abc import Callable

import grpc

Wrap = Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]


class HandlerInterceptor(grpc.ServerInterceptor):
    """`wrap(handler, method)` for every method of a threaded server."""

    def __init__(self, wrap: Wrap) -> None:
        self.wrap = wrap

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        return None if handler is None else self.wrap(handler, handler_call_details.method)


class AioHandlerInterceptor(grpc.aio.ServerInterceptor):
    """`wrap(handler, method)` for every method of an asyncio server."""

    def __init__(self, wrap: Wrap) -> None:
        self.wrap = wrap

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        return None if handler is None else self.wrap(handler, handler_call_details.method)
