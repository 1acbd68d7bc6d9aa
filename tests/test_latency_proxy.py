"""The WAN emulator (wire/latency_proxy.py) against real sockets and a real gRPC server: it
delays each direction by the configured one-way delay, limits bandwidth, forwards every byte
in order, passes a half-close on after the data, and closes cleanly."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wire.grpc_factory import open_channel, start_server
from wire.latency_proxy import LatencyProxy


@contextmanager
def echo_server(close_after_first: bool = False) -> Iterator[str]:
    """A TCP server that echoes until its peer half-closes, then half-closes too."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data)
                if close_after_first:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def dial(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def round_trip(sock: socket.socket, payload: bytes) -> float:
    started = time.perf_counter()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.perf_counter() - started


def test_delays_each_direction_by_the_one_way_delay():
    with (
        echo_server() as target,
        LatencyProxy(target, delay_s=0.05) as proxy,
        dial(proxy.address) as sock,
    ):
        rtts = [round_trip(sock, b"ping %d" % i) for i in range(5)]
    # Both directions cross the proxy: 2 x 50 ms, plus scheduling noise on a shared machine.
    assert min(rtts) >= 0.099, rtts
    assert min(rtts) < 0.5, rtts


def test_without_delay_it_adds_almost_nothing():
    with (
        echo_server() as target,
        LatencyProxy(target, delay_s=0.0) as proxy,
        dial(proxy.address) as sock,
    ):
        rtts = [round_trip(sock, b"x") for _ in range(20)]
    assert sorted(rtts)[len(rtts) // 2] < 0.05, rtts


def test_forwards_every_byte_in_order_and_counts_them():
    payload = os.urandom(3 * 1024 * 1024 + 17)  # many chunks, not a multiple of the chunk size
    with echo_server() as target, LatencyProxy(target, delay_s=0.002) as proxy:
        with dial(proxy.address) as sock:
            done: list[bytes] = []
            reader = threading.Thread(
                target=lambda: done.append(recv_exactly(sock, len(payload))), daemon=True
            )
            reader.start()
            sock.sendall(payload)
            reader.join(timeout=30)
            assert done and done[0] == payload
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b"", "the echo server's half-close did not come through"
        deadline = time.monotonic() + 5
        while proxy.stats.bytes_down < len(payload) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert proxy.stats.connections == 1
    assert proxy.stats.bytes_up == len(payload)
    assert proxy.stats.bytes_down == len(payload)


def test_bandwidth_limit_paces_a_large_transfer():
    size, rate = 1024 * 1024, 4 * 1024 * 1024  # 1 MB at 4 MB/s each way: >= 0.25 s per direction
    with (
        echo_server() as target,
        LatencyProxy(target, delay_s=0.0, bandwidth_bytes_s=rate) as proxy,
        dial(proxy.address) as sock,
    ):
        payload = os.urandom(size)
        started = time.perf_counter()
        reader_out: list[bytes] = []
        reader = threading.Thread(
            target=lambda: reader_out.append(recv_exactly(sock, size)), daemon=True
        )
        reader.start()
        sock.sendall(payload)
        reader.join(timeout=30)
        elapsed = time.perf_counter() - started
    assert reader_out and reader_out[0] == payload
    # Up and down pipeline chunk by chunk, so the whole echo takes a bit over size / rate.
    assert elapsed >= 0.24, elapsed


def test_a_closed_target_closes_the_client_connection():
    with (
        echo_server(close_after_first=True) as target,
        LatencyProxy(target, delay_s=0.01) as proxy,
        dial(proxy.address) as sock,
    ):
        assert round_trip(sock, b"one") > 0
        sock.settimeout(5)
        assert sock.recv(1) == b""


def test_an_unreachable_target_closes_the_client_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nobody listens once closed
    with LatencyProxy(dead, delay_s=0.0) as proxy, dial(proxy.address) as sock:
        sock.settimeout(5)
        assert sock.recv(1) == b""


def test_close_ends_open_connections_and_the_thread():
    with echo_server() as target:
        proxy = LatencyProxy(target, delay_s=0.01).start()
        sock = dial(proxy.address)
        round_trip(sock, b"hello")
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < 5
        assert proxy._thread is not None and not proxy._thread.is_alive()
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # a reset is a clean end too
            assert sock.recv(1) == b""
        sock.close()
        with pytest.raises(OSError):
            dial(proxy.address).close()


def test_grpc_calls_through_the_proxy_pay_the_round_trip():
    server = start_server("127.0.0.1:0", lambda _server: ["probe"])
    server.set_serving("probe")
    try:
        with LatencyProxy(f"127.0.0.1:{server.port}", delay_s=0.03) as proxy:
            channel = open_channel(proxy.address, None)
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(service="probe"), timeout=10)  # connect
            times = []
            for _ in range(3):
                started = time.perf_counter()
                reply = stub.Check(health_pb2.HealthCheckRequest(service="probe"), timeout=10)
                times.append(time.perf_counter() - started)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            channel.close()
    finally:
        server.stop(0)
    assert min(times) >= 0.059, times
    assert min(times) < 0.5, times


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="delay_s"):
        LatencyProxy("127.0.0.1:1", delay_s=-1)
    with pytest.raises(ValueError, match="bandwidth"):
        LatencyProxy("127.0.0.1:1", delay_s=0, bandwidth_bytes_s=0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        LatencyProxy("nowhere", delay_s=0)


def test_grpc_unavailable_target_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with LatencyProxy(dead, delay_s=0.0) as proxy:
        channel = open_channel(proxy.address, None)
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
        channel.close()
