"""The one place where gRPC servers and channels are built: message limits, keepalive,
TLS, interceptors, the standard health service and (by a setting) server reflection are set
here for every process.

Two kinds of server: `start_server` (a thread per call; the party node, whose calls are few
and bounded) and `start_aio_server` (an asyncio server on its own loop thread; the
coordinator, where every node holds a WatchTask stream open for a whole task: coroutine
handlers cost no thread while they wait, plain ones run in a bounded thread pool)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from wire.request_guard import aio_request_guard, request_guard
from wire.tls import TlsSettings

#: Payloads are chunked at about 1 MB; the limit leaves room for framing and PSI chunks.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


def _server_options(max_receive_bytes: int | None) -> list[tuple[str, Any]]:
    options = list(_OPTIONS)
    if max_receive_bytes is not None:
        options = [o for o in options if o[0] != "grpc.max_receive_message_length"]
        options.append(("grpc.max_receive_message_length", max_receive_bytes))
    return options


def _bind(server: Any, listen: str, tls: TlsSettings | None) -> int:
    if tls is not None and tls.enabled:
        port = server.add_secure_port(listen, tls.server_credentials())
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: address in use or not local to this host")
    return port


def _reflected(names: Sequence[str], server: Any) -> None:
    """Let grpcurl-style tools list the services and fetch their descriptors."""
    services = [*names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(services, server)


class Server:
    """A started gRPC server with its health servicer; `port` is the bound port."""

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer):
        self.grpc_server = server
        self.port = port
        self.health = health_servicer

    def set_serving(self, service: str, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(service, status)

    def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()


def start_server(
    listen: str,
    register: Callable[[grpc.Server], Sequence[str]],
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_workers: int = 32,
    reflection_enabled: bool = False,
    max_receive_bytes: int | None = None,
    max_concurrent_rpcs: int | None = None,
) -> Server:
    """Bind `listen` (``host:port``, port 0 picks a free one), add the servicers that
    `register` adds (it returns their full service names for health), and start. Requests
    that do not decode end with INVALID_ARGUMENT (wire.request_guard); past
    `max_concurrent_rpcs` calls, gRPC refuses new ones with RESOURCE_EXHAUSTED."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[request_guard(), *interceptors],
        options=_server_options(max_receive_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names = register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        _reflected(names, server)
    port = _bind(server, listen, tls)
    server.start()
    wrapped = Server(server, port, health_servicer)
    for name in [*names, ""]:
        wrapped.set_serving(name)
    return wrapped


class AioServer:
    """A started grpc.aio server running on its own event-loop thread; the same surface as
    `Server` for the composition root (port, set_serving, stop, wait)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._loop, self._thread = loop, thread
        self.grpc_server: grpc.aio.Server | None = None
        self.health: Any = None
        self.port = 0
        self._pool: futures.ThreadPoolExecutor | None = None

    def run(self, coroutine: Awaitable[Any], timeout: float | None = 30.0) -> Any:
        """Run `coroutine` on the server's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)  # type: ignore[arg-type]

    def set_serving(self, service: str, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.run(self.health.set(service, status))

    def stop(self, grace: float = 1.0) -> None:
        if self.grpc_server is not None:
            self.run(self.health.enter_graceful_shutdown())
            self.run(self.grpc_server.stop(grace), timeout=grace + 30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        assert self.grpc_server is not None
        self.run(self.grpc_server.wait_for_termination(), timeout=None)


def start_aio_server(
    listen: str,
    register: Callable[[grpc.aio.Server], Sequence[str]],
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_workers: int = 32,
    reflection_enabled: bool = False,
    max_receive_bytes: int | None = None,
) -> AioServer:
    """Like `start_server`, as an asyncio server: async-generator handlers wait on the loop
    without a thread; plain handlers run in a pool of `max_workers` threads."""
    from grpc_health.v1 import _async as health_aio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
    thread.start()
    wrapped = AioServer(loop, thread)
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    wrapped._pool = pool

    async def build() -> None:
        server = grpc.aio.server(
            migration_thread_pool=pool,
            interceptors=[aio_request_guard(), *interceptors],
            options=_server_options(max_receive_bytes),
        )
        names = register(server)
        wrapped.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(wrapped.health, server)
        if reflection_enabled:
            _reflected(names, server)
        wrapped.port = _bind(server, listen, tls)
        await server.start()
        wrapped.grpc_server = server
        for name in [*names, ""]:
            await wrapped.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    try:
        wrapped.run(build())
    except BaseException:
        wrapped.stop(0)
        raise
    return wrapped


def open_channel(
    target: str,
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
    server_name: str | None = None,
    extra_options: Sequence[tuple[str, int]] = (),
) -> grpc.Channel:
    """A channel to `target` with the shared limits; mutual TLS when `tls` is enabled.
    `server_name` overrides the name checked in the server's certificate; `extra_options`
    adds channel arguments (e.g. reconnect back-off)."""
    options = [*_OPTIONS, *extra_options]
    if tls is not None and tls.enabled:
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(target, tls.channel_credentials(server_name), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if interceptors:
        channel = grpc.intercept_channel(channel, *interceptors)
    return channel
