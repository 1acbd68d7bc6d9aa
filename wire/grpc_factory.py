"""The one place where gRPC servers and channels are built: message limits, keepalive,
TLS, interceptors and the standard health service are set here for every process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

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
    max_concurrent_rpcs: int | None = None,
) -> Server:
    """Bind `listen` (``host:port``, port 0 picks a free one), add the servicers that
    `register` adds (it returns their full service names for health), and start. Past
    `max_concurrent_rpcs` calls, gRPC refuses new ones with RESOURCE_EXHAUSTED."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=list(interceptors),
        options=_OPTIONS,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names = register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is not None and tls.enabled:
        port = server.add_secure_port(listen, tls.server_credentials())
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: address in use or not local to this host")
    server.start()
    wrapped = Server(server, port, health_servicer)
    for name in [*names, ""]:
        wrapped.set_serving(name)
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
        channel = grpc.secure_channel(target, tls.channel_credentials(), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if interceptors:
        channel = grpc.intercept_channel(channel, *interceptors)
    return channel
