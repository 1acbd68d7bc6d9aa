"""The multi-party PSI's building blocks: Intel's multi-buffer X25519 is OpenSSL's X25519 bit
for bit (curve and twist points, odd counts, low-order points refused), and the point index
matches exactly, its fast path and its fallback alike."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest

from party_node.psi import x25519, x25519_mb
from party_node.psi.point_index import PointIndex


def _has_ifma() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return platform.machine() == "x86_64" and cpuinfo.is_file() and (
        "avx512ifma" in cpuinfo.read_text()
    )


needs_mb = pytest.mark.skipif(
    not _has_ifma(), reason="multi-buffer X25519 needs an x86-64 CPU with AVX-512 IFMA"
)


@needs_mb
def test_multi_buffer_x25519_loads_where_the_cpu_has_it() -> None:
    assert x25519_mb.available(), "ipp-crypto's libcrypto_mb did not load (requirements.lock)"


@needs_mb
@pytest.mark.parametrize("count", [1, 7, 8, 9, 5000])
def test_multi_buffer_equals_openssl(count: int) -> None:
    points = x25519.hash_to_points([f"id{i}" for i in range(count)])
    key = x25519.new_key()
    assert x25519_mb.blind(key, points, threads=2) == x25519.blind_openssl(key, points)


@needs_mb
def test_multi_buffer_refuses_a_low_order_point_like_openssl() -> None:
    points = x25519.hash_to_points([f"id{i}" for i in range(20)])
    bad = points[: 11 * 32] + (1).to_bytes(32, "little") + points[11 * 32 :]
    key = x25519.new_key()
    for blind in (x25519_mb.blind, x25519.blind_openssl):
        with pytest.raises(ValueError, match="element 11 is a low-order X25519 point"):
            blind(key, bad)


def test_openssl_backend_is_chosen_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(x25519_mb.BACKEND_ENV, "openssl")
    x25519_mb._function.cache_clear()
    try:
        assert not x25519_mb.available()
        points = x25519.hash_to_points(["a", "b"])
        key = x25519.new_key()
        assert x25519.blind(key, points) == x25519.blind_openssl(key, points)
    finally:
        monkeypatch.delenv(x25519_mb.BACKEND_ENV)
        x25519_mb._function.cache_clear()


def _random_points(count: int) -> bytes:
    return os.urandom(32 * count)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_point_index_finds_exactly(shared_prefix: bool) -> None:
    data = bytearray(_random_points(300))
    if shared_prefix:  # two points agreeing on their first 8 bytes: the exact fallback
        data[32:40] = data[0:8]
    index = PointIndex(bytes(data))
    queries = bytearray(bytes(data[64 * 32 : 128 * 32]) + _random_points(50))
    # Same prefix as an indexed point, different rest: not a member.
    queries += data[5 * 32 : 5 * 32 + 8] + os.urandom(24)
    found = index.find(bytes(queries))
    assert found[:64].tolist() == list(range(64, 128))
    assert (found[64:] == -1).all()
    assert index.find(bytes(data[32:64])).tolist() == [1]
    assert PointIndex(b"").find(bytes(data[:64])).tolist() == [-1, -1]
    assert index.contains(b"").shape == (0,)
    assert isinstance(found, np.ndarray)
