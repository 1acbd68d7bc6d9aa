"""A loopback TCP proxy that makes a link look like a WAN: every chunk it forwards arrives
`delay_s` later (one way, so a request and its answer pay twice that: the round-trip time),
optionally through a per-direction bandwidth limit. For tests and benchmarks on one machine,
which has no `tc netem`: put one in front of each party's listen address and let the party
advertise the proxy's, so every byte other parties send it, and every answer, crosses it.

    with LatencyProxy("127.0.0.1:50061", delay_s=0.025) as proxy:
        ...  # dial proxy.address instead of 127.0.0.1:50061

or as a process: `python -m wire.latency_proxy --target 127.0.0.1:50061 --delay-ms 25`.
Order and bytes are kept exactly; a half-close (EOF) crosses after the data before it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from dataclasses import dataclass, field

#: Bytes read from a socket at a time; each read is delayed as one chunk.
CHUNK = 64 * 1024
#: Chunks waiting for their delivery time per direction before reading pauses (back-pressure).
QUEUE_CHUNKS = 1024


@dataclass
class LinkStats:
    """What crossed the proxy, for a benchmark's check that the parties used it."""

    connections: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, up: bool, n: int) -> None:
        with self.lock:
            if up:
                self.bytes_up += n
            else:
                self.bytes_down += n


class _Direction:
    """One direction of one connection: reads chunks, delivers each at its due time, in order.
    A bandwidth limit serialises chunks on the link (start = max(now, link free)) before the
    propagation delay, like a real line."""

    def __init__(self, delay_s: float, bandwidth: float | None) -> None:
        self.delay_s = delay_s
        self.bandwidth = bandwidth
        self.link_free = 0.0

    def due(self, now: float, size: int) -> float:
        if not self.bandwidth:
            return now + self.delay_s
        start = max(now, self.link_free)
        self.link_free = start + size / self.bandwidth
        return self.link_free + self.delay_s


class LatencyProxy:
    """Listens on `listen` (port 0: any free port) and forwards each connection to `target`."""

    def __init__(
        self,
        target: str,
        delay_s: float,
        bandwidth_bytes_s: float | None = None,
        listen: str = "127.0.0.1:0",
    ) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        if bandwidth_bytes_s is not None and bandwidth_bytes_s <= 0:
            raise ValueError(f"bandwidth_bytes_s must be > 0 or None, got {bandwidth_bytes_s}")
        self.target_host, self.target_port = _split(target)
        self.listen_host, self.listen_port = _split(listen)
        self.delay_s = delay_s
        self.bandwidth = bandwidth_bytes_s
        self.stats = LinkStats()
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- lifecycle (from any thread) ----------------------------------------------------------
    def start(self) -> LatencyProxy:
        """Serve from a background thread; `address` is set when this returns."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def close(self) -> None:
        """Stop listening and close every connection; returns when the thread has ended."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the event loop -------------------------------------------------------------------------
    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.listen_port, limit=CHUNK
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(c_writer)
        try:
            await self._forward(c_reader, c_writer)
        except asyncio.CancelledError:
            pass  # shutting down; ending normally keeps asyncio's server callback quiet
        finally:
            c_writer.close()
            self._writers.discard(c_writer)
            self._tasks.discard(task)

    async def _forward(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(
                self.target_host, self.target_port, limit=CHUNK
            )
        except OSError:
            return  # the target is down: the client sees the connection close
        self._writers.add(t_writer)
        with self.stats.lock:
            self.stats.connections += 1
        pipes = {
            asyncio.ensure_future(self._pipe(c_reader, t_writer, up=True)),
            asyncio.ensure_future(self._pipe(t_reader, c_writer, up=False)),
        }
        try:
            while pipes:
                done, pipes = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                if any(t.result() for t in done):  # a reset: drop the whole connection
                    break
        finally:
            for pipe in pipes:
                pipe.cancel()
            t_writer.close()
            self._writers.discard(t_writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> bool:
        """Read chunks as they come; a second task writes each at its due time. True when
        the connection was reset rather than half-closed."""
        loop = asyncio.get_running_loop()
        direction = _Direction(self.delay_s, self.bandwidth)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        deliver = asyncio.ensure_future(self._deliver(queue, writer, up))
        reset = False
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data, reset = b"", True
                await queue.put((direction.due(loop.time(), len(data)), data))
                if not data:  # EOF (or reset): passed on after the data before it
                    break
            return not await deliver or reset
        finally:
            deliver.cancel()

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, up: bool
    ) -> bool:
        """Write each chunk at its due time; False when the far side is gone."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return True
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return False
            self.stats.add(up, len(data))


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument("--bandwidth-mbps", type=float, default=None, help="per direction")
    args = parser.parse_args(argv)
    bandwidth = args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps else None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LatencyProxy(args.target, args.delay_ms / 1000, bandwidth, args.listen) as proxy:
        print(proxy.address, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
