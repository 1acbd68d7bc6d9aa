"""A TCP proxy that records every byte passing through it, for tests that check what one
party receives from another on the wire (plaintext gRPC: HTTP/2 frames with the protobuf
messages in them, uncompressed, so a tensor sent in the clear appears verbatim)."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class RecordingProxy:
    """Listens on 127.0.0.1:`port`; forwards to `target`; `downstream` holds what the target
    sent back (what the proxy's client received), `upstream` what the client sent."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.upstream = bytearray()
        self.downstream = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:  # the target is not up yet: the client will dial again
                client.close()
                continue
            for src, dst, sink in ((client, server, self.upstream),
                                   (server, client, self.downstream)):
                threading.Thread(target=self._pump, args=(src, dst, sink), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, sink: bytearray) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                with self._lock:
                    sink.extend(data)
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def received(self) -> bytes:
        with self._lock:
            return bytes(self.downstream)

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
