"""The gRPC interceptors that feed `wire.metrics.RpcMetrics`: bytes per message and latency by
final status code, for all four handler kinds, on the threaded server, the asyncio server
and the client side."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from wire.handler_wrapping import AioHandlerInterceptor, HandlerInterceptor
from wire.metrics import RpcMetrics


def _method_label(full_method: str) -> str:
    return full_method.lstrip("/")


def _size(message: Any) -> int:
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


class _Observation:
    """One RPC in flight: adds bytes as messages pass and records the latency once."""

    def __init__(self, metrics: RpcMetrics, method: str, side: str) -> None:
        self.metrics, self.method, self.side = metrics, method, side
        self.start = time.perf_counter()
        self._done = False
        self._lock = threading.Lock()

    def sent(self, message: Any) -> None:
        self.metrics.rpc_sent_bytes.labels(method=self.method, side=self.side).inc(_size(message))

    def received(self, message: Any) -> None:
        n = _size(message)
        self.metrics.rpc_received_bytes.labels(method=self.method, side=self.side).inc(n)

    def finish(self, code: grpc.StatusCode | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        name = (code or grpc.StatusCode.OK).name
        self.metrics.rpc_duration.labels(method=self.method, code=name, side=self.side).observe(
            time.perf_counter() - self.start
        )

    def counted_iter(
        self, messages: Iterator[Any], on_each: Callable[[Any], None]
    ) -> Iterator[Any]:
        for message in messages:
            on_each(message)
            yield message


def _server_code(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


def _observed_handler(
    metrics: RpcMetrics, handler: grpc.RpcMethodHandler, full_method: str
) -> grpc.RpcMethodHandler:
    """`handler` with every behavior wrapped in an _Observation."""
    method = _method_label(full_method)

    def received(obs: _Observation, request_or_iterator: Any) -> Any:
        if handler.request_streaming:
            return obs.counted_iter(request_or_iterator, obs.received)
        obs.received(request_or_iterator)
        return request_or_iterator

    def wrap_unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(behavior):
            return wrap_async_unary_response(behavior)

        def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            obs = _Observation(metrics, method, "server")
            request_or_iterator = received(obs, request_or_iterator)
            try:
                response = behavior(request_or_iterator, context)
            except BaseException as error:
                obs.finish(_server_code(context, error))
                raise
            obs.sent(response)
            obs.finish(_server_code(context, None))
            return response

        return wrapped

    def areceived(obs: _Observation, request_or_iterator: Any) -> Any:
        if not handler.request_streaming:
            obs.received(request_or_iterator)
            return request_or_iterator

        async def counted() -> AsyncIterator[Any]:
            async for message in request_or_iterator:
                obs.received(message)
                yield message

        return counted()

    def wrap_async_unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            obs = _Observation(metrics, method, "server")
            request = areceived(obs, request)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                obs.finish(_server_code(context, error))
                raise
            obs.sent(response)
            obs.finish(_server_code(context, None))
            return response

        return wrapped

    def wrap_stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            return wrap_async_stream_response(behavior)

        def wrapped(request_or_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            obs = _Observation(metrics, method, "server")
            request_or_iterator = received(obs, request_or_iterator)
            # The client may cancel mid-stream: the generator is then closed (GeneratorExit).
            context.add_callback(lambda: obs.finish(grpc.StatusCode.CANCELLED))
            try:
                for response in behavior(request_or_iterator, context):
                    obs.sent(response)
                    yield response
            except GeneratorExit:
                obs.finish(grpc.StatusCode.CANCELLED)
                raise
            except BaseException as error:
                obs.finish(_server_code(context, error))
                raise
            obs.finish(_server_code(context, None))

        return wrapped

    def wrap_async_stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            obs = _Observation(metrics, method, "server")
            request = areceived(obs, request)
            try:
                async for response in behavior(request, context):
                    obs.sent(response)
                    yield response
            except (GeneratorExit, asyncio.CancelledError):
                obs.finish(grpc.StatusCode.CANCELLED)
                raise
            except BaseException as error:
                obs.finish(_server_code(context, error))
                raise
            obs.finish(_server_code(context, None))

        return wrapped

    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary_response(handler.unary_unary), de, ser
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary_response(handler.stream_unary), de, ser
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream_response(handler.unary_stream), de, ser
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream_response(handler.stream_stream), de, ser
    )


def server_interceptor(metrics: RpcMetrics) -> HandlerInterceptor:
    """Records latency, status code and message bytes for all four handler kinds."""
    return HandlerInterceptor(functools.partial(_observed_handler, metrics))


def aio_server_interceptor(metrics: RpcMetrics) -> AioHandlerInterceptor:
    """The same for the asyncio server: thread-pool behaviors and coroutine ones."""
    return AioHandlerInterceptor(functools.partial(_observed_handler, metrics))


class _CountingResponseStream:
    """A client-side response stream that counts each message and records the final status;
    every other attribute (code(), cancel(), ...) is the underlying call's."""

    def __init__(self, call: Any, obs: _Observation) -> None:
        self._call, self._obs = call, obs

    def __iter__(self) -> _CountingResponseStream:
        return self

    def __next__(self) -> Any:
        try:
            message = next(self._call)
        except StopIteration:
            self._obs.finish(grpc.StatusCode.OK)
            raise
        except grpc.RpcError as error:
            self._obs.finish(error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN)
            raise
        self._obs.received(message)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class MetricsClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Client-side twin of server_interceptor (side="client")."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    def _start(
        self, continuation: Any, details: Any, request: Any, streaming: bool
    ) -> tuple[_Observation, Any]:
        """Count what is sent (one request or each of a stream's) and start the call."""
        obs = _Observation(self.metrics, _method_label(details.method), "client")
        if streaming:
            request = obs.counted_iter(request, obs.sent)
        else:
            obs.sent(request)
        return obs, continuation(details, request)

    def _unary_response(self, continuation: Any, details: Any, request: Any, streaming: bool):
        obs, call = self._start(continuation, details, request, streaming)

        def done(future: Any) -> None:
            code = future.code()
            if code == grpc.StatusCode.OK:
                obs.received(future.result())
            obs.finish(code)

        call.add_done_callback(done)
        return call

    def _stream_response(self, continuation: Any, details: Any, request: Any, streaming: bool):
        obs, call = self._start(continuation, details, request, streaming)
        call.add_done_callback(lambda c: obs.finish(c.code()))
        return _CountingResponseStream(call, obs)

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[override]
        return self._unary_response(continuation, client_call_details, request, False)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return self._unary_response(continuation, client_call_details, request_iterator, True)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[override]
        return self._stream_response(continuation, client_call_details, request, False)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return self._stream_response(continuation, client_call_details, request_iterator, True)
