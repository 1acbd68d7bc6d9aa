"""Large messages travel as a stream of ~1 MB chunks of one serialized Payload."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from heteronn.v1 import common_pb2

CHUNK_BYTES = 1 << 20
#: Refuse to reassemble more than this; protects a node from a runaway peer.
MAX_PAYLOAD_BYTES = 1 << 31


def payload_to_chunks(
    payload: common_pb2.Payload, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[common_pb2.PayloadChunk]:
    data = payload.SerializeToString()
    if not data:
        yield common_pb2.PayloadChunk(data=b"", last=True)
        return
    for start in range(0, len(data), chunk_bytes):
        end = start + chunk_bytes
        yield common_pb2.PayloadChunk(data=data[start:end], last=end >= len(data))


def payload_from_chunks(chunks: Iterable[common_pb2.PayloadChunk]) -> common_pb2.Payload:
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk.data)
        size += len(chunk.data)
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes refused")
        if chunk.last:
            payload = common_pb2.Payload()
            payload.ParseFromString(b"".join(parts))
            return payload
    raise ValueError("payload stream ended before its last chunk (sender stopped mid-message)")
