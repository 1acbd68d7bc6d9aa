"""Tensors on the wire: dtype + shape + raw little-endian bytes. Never pickle."""

from __future__ import annotations

import math

import numpy as np
import torch

from heteronn.v1 import common_pb2
from wire import limits

#: The dtypes a peer may send; anything else is refused before touching the bytes.
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class TensorDecodeError(ValueError):
    """The bytes do not match the declared dtype/shape, or the values are not finite."""


def tensor_to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    t = tensor.detach().cpu().contiguous()
    if t.dtype not in _NAMES:
        raise TypeError(f"cannot send a tensor of dtype {t.dtype}; use one of {sorted(_DTYPES)}")
    if t.dtype == torch.bfloat16:
        data = t.view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
    return common_pb2.Tensor(dtype=_NAMES[t.dtype], shape=list(t.shape), data=data)


def tensor_from_proto(msg: common_pb2.Tensor, require_finite: bool = True) -> torch.Tensor:
    """Decode, checking dtype, that the byte count matches the shape, and finiteness."""
    if msg.dtype not in _DTYPES:
        raise TensorDecodeError(f"unknown dtype {msg.dtype!r}; allowed: {sorted(_DTYPES)}")
    dtype = _DTYPES[msg.dtype]
    if len(msg.shape) > limits.MAX_TENSOR_DIMS:
        raise TensorDecodeError(
            f"tensor has {len(msg.shape)} dimensions; at most {limits.MAX_TENSOR_DIMS}"
        )
    shape = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in shape):
        raise TensorDecodeError(f"negative dimension in shape {list(shape)}")
    elements = math.prod(shape)  # Python ints: no int64 overflow wrapping to a small number
    if elements > limits.MAX_TENSOR_ELEMENTS:
        raise TensorDecodeError(
            f"tensor shape {list(shape)} has {elements} elements; at most "
            f"{limits.MAX_TENSOR_ELEMENTS}"
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = elements * itemsize
    if len(msg.data) != expected:
        raise TensorDecodeError(
            f"tensor declares shape {list(shape)} of {msg.dtype} ({expected} bytes) "
            f"but carries {len(msg.data)} bytes"
        )
    if dtype == torch.bfloat16:
        arr = np.frombuffer(msg.data, dtype="<i2").reshape(shape)
        tensor = torch.from_numpy(arr.copy()).view(torch.bfloat16)
    else:
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype.newbyteorder("<")
        arr = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
        tensor = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
    if require_finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise TensorDecodeError(f"tensor of shape {list(shape)} contains NaN or infinite values")
    return tensor
