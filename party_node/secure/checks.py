"""Checks on what arrives in a protocol message: names, shapes, finiteness, ranges."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from party_node.secure.errors import SecureProtocolError


def expect_names(msg: Mapping[str, object], names: Iterable[str], step: str) -> None:
    """The message must carry exactly these entries (no more, no fewer)."""
    want, got = set(names), set(msg)
    if want != got:
        raise SecureProtocolError(
            f"{step}: expected entries {sorted(want)[:6]}..., missing {sorted(want - got)[:6]}, "
            f"unexpected {sorted(got - want)[:6]}"
        )


def blob(msg: Mapping[str, object], name: str, step: str) -> bytes:
    value = msg.get(name)
    if not isinstance(value, bytes | bytearray):
        raise SecureProtocolError(f"{step}: '{name}' must be bytes (a ciphertext)")
    return bytes(value)


def tensor(msg: Mapping[str, object], name: str, shape: tuple[int, ...], step: str) -> np.ndarray:
    """A float tensor of exactly `shape`, as float64 numpy."""
    value = msg.get(name)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise SecureProtocolError(f"{step}: '{name}' must be a floating-point tensor")
    if tuple(value.shape) != shape:
        raise SecureProtocolError(
            f"{step}: '{name}' has shape {list(value.shape)}, expected {list(shape)}"
        )
    return value.detach().cpu().to(torch.float64).numpy()


def rows_of(msg: Mapping[str, object], step: str) -> int:
    value = msg.get("rows")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.numel() != 1:
        raise SecureProtocolError(f"{step}: 'rows' must be a single int64")
    rows = int(value.item())
    if rows < 1:
        raise SecureProtocolError(f"{step}: 'rows' must be >= 1, got {rows}")
    return rows


def in_range(values: np.ndarray, bound: float, what: str, fix: str = "") -> np.ndarray:
    """Finite and |v| <= bound, else a protocol error (never a NaN model); `fix` says which
    setting to change when the bound is a user setting."""
    if not np.isfinite(values).all():
        raise SecureProtocolError(f"{what}: contains NaN or infinite values")
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak > bound:
        tail = f"; {fix}" if fix else ""
        raise SecureProtocolError(
            f"{what}: value {peak:.3g} exceeds the agreed bound {bound:.3g}{tail}"
        )
    return values
