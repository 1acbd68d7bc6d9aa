"""Requests that are not the protobuf message they claim to be end with INVALID_ARGUMENT.

gRPC's own deserialization failure answers INTERNAL ("Exception deserializing request!"),
which tells an integrator nothing and looks like our bug. This interceptor receives the raw
bytes instead, parses them itself and aborts with a message naming the expected message type.
It must come first among a server's interceptors, so the others see parsed messages. One
class serves the threaded server (node) and the asyncio server (coordinator).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from wire.handler_wrapping import AioHandlerInterceptor, HandlerInterceptor


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request message")


def _problem(method: str, deserializer: Callable[[bytes], Any]) -> str:
    return (
        f"{method}: the request is not a valid {_type_name(deserializer)} (protobuf decoding "
        "failed); build it from the heteronn.v1 protos"
    )


def guard_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` with its request parsed here (INVALID_ARGUMENT on failure)."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    problem = _problem(method, parse)

    def one(raw: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return parse(raw)
        except Exception:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            raise  # context.abort raises; for type checkers

    def stream(raws: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        for raw in raws:
            yield one(raw, context)

    async def astream(raws: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for raw in raws:
            try:
                request = parse(raw)
            except Exception:
                await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                return
            yield request

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        behavior = handler.unary_unary
        if inspect.iscoroutinefunction(behavior):

            async def coro(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
                try:
                    request = parse(raw)
                except Exception:
                    await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                    return None
                return await behavior(request, ctx)

            return grpc.unary_unary_rpc_method_handler(coro, None, ser)
        return grpc.unary_unary_rpc_method_handler(
            lambda raw, ctx: behavior(one(raw, ctx), ctx), None, ser
        )
    if handler.stream_unary is not None:
        behavior = handler.stream_unary
        if inspect.iscoroutinefunction(behavior):

            async def client_stream(raws: Any, ctx: grpc.aio.ServicerContext) -> Any:
                return await behavior(astream(raws, ctx), ctx)

            return grpc.stream_unary_rpc_method_handler(client_stream, None, ser)
        return grpc.stream_unary_rpc_method_handler(
            lambda raws, ctx: behavior(stream(raws, ctx), ctx), None, ser
        )
    if handler.unary_stream is not None:
        behavior = handler.unary_stream
        if inspect.isasyncgenfunction(behavior):

            async def agen(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    request = parse(raw)
                except Exception:
                    await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                    return
                async for response in behavior(request, ctx):
                    yield response

            return grpc.unary_stream_rpc_method_handler(agen, None, ser)

        def gen(raw: bytes, ctx: grpc.ServicerContext) -> Iterator[Any]:
            yield from behavior(one(raw, ctx), ctx)

        return grpc.unary_stream_rpc_method_handler(gen, None, ser)
    behavior = handler.stream_stream
    if inspect.isasyncgenfunction(behavior):

        async def abidi(raws: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(astream(raws, ctx), ctx):
                yield response

        return grpc.stream_stream_rpc_method_handler(abidi, None, ser)

    def bidi(raws: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[Any]:
        yield from behavior(stream(raws, ctx), ctx)

    return grpc.stream_stream_rpc_method_handler(bidi, None, ser)


def request_guard() -> HandlerInterceptor:
    """For the threaded server (the node)."""
    return HandlerInterceptor(guard_handler)


def aio_request_guard() -> AioHandlerInterceptor:
    """For the asyncio server (the coordinator)."""
    return AioHandlerInterceptor(guard_handler)
