"""Large messages travel as a stream of ~1 MB chunks of one serialized Payload.

The first chunk also carries the Payload's header and its total size, so a receiver decides
whether to accept the message (task, sender, kind, size) before it reads the body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from heteronn.v1 import common_pb2

CHUNK_BYTES = 1 << 20

C = TypeVar("C")


def payload_to_chunks(
    payload: common_pb2.Payload, chunk_type: type[C], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[C]:
    """`chunk_type` (FeatureExchangeRequest or GradientReturnRequest) messages carrying
    `payload`: header and total size in the first, then the body in order."""
    data = payload.SerializeToString()
    return serialized_to_chunks(payload.header, data, chunk_type, chunk_bytes)


def serialized_to_chunks(
    header: common_pb2.Header, data: bytes, chunk_type: type[C], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[C]:
    """As payload_to_chunks, for a Payload already serialized to `data`."""
    ctor: Any = chunk_type
    first = {"header": header, "total_bytes": len(data)}
    for start in range(0, max(len(data), 1), chunk_bytes):
        end = start + chunk_bytes
        yield ctor(data=data[start:end], last=end >= len(data), **first)
        first = {}
