"""X25519 eight points at a time: Intel's multi-buffer implementation (`mbx_x25519_mb8` in
ipp-crypto's libcrypto_mb, AVX-512 IFMA), called through ctypes.

The same function as OpenSSL's X25519, bit for bit (tests/test_psi_x25519.py), about 5-8x
cheaper per multiplication on this machine. ctypes releases the GIL during the call, so a
few threads use every core. `available()` is False where the library or the CPU feature is
missing; `x25519.blind` then uses OpenSSL. No curve arithmetic of ours: we only lay out
pointers and read the per-lane status."""

from __future__ import annotations

import ctypes
import os
import sys
from concurrent import futures
from functools import cache
from pathlib import Path

import numpy as np

POINT_BYTES = 32
LANES = 8
#: Intel's compiler runtime libraries libcrypto_mb needs (wheel intel-cmplr-lib-rt), loaded
#: first, globally, from the same folder.
_RUNTIME = ("libintlc.so.5", "libimf.so", "libsvml.so", "libirng.so")
#: Set to "openssl" to use OpenSSL's X25519 even where this one works.
BACKEND_ENV = "HETERONN_PSI_X25519"
#: Below this many points one thread does the work.
_PARALLEL_FROM = 4096
#: u = 9, the base point: a valid filler for unused lanes.
_FILLER = (9).to_bytes(POINT_BYTES, "little")


def _library_folders() -> list[Path]:
    """Where pip puts the wheels' `data/lib` files: the environment's own lib folder."""
    return [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]


@cache
def _function():
    if os.environ.get(BACKEND_ENV, "").lower() == "openssl":
        return None
    for folder in _library_folders():
        path = folder / "libcrypto_mb.so.13"
        if not path.is_file():
            continue
        try:
            for name in _RUNTIME:
                ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(str(path))
        except OSError:
            return None
        lib.mbx_is_crypto_mb_applicable.restype = ctypes.c_int
        lib.mbx_is_crypto_mb_applicable.argtypes = [ctypes.c_uint64]
        if not lib.mbx_is_crypto_mb_applicable(0):  # 0: detect this CPU's features
            return None
        fn = lib.mbx_x25519_mb8
        fn.restype = ctypes.c_uint32  # 4 status bits per lane, 0 = OK
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        return fn
    return None


def available() -> bool:
    return _function() is not None


def blind(key: bytes, points: bytes, threads: int | None = None) -> bytes:
    """X25519(key, u) for every 32-byte u of `points`; ValueError names the first
    low-order element (whose result would be the identity)."""
    fn = _function()
    if fn is None:
        raise RuntimeError("multi-buffer X25519 is not available on this machine")
    count = len(points) // POINT_BYTES
    if count == 0:
        return b""
    padded = -(-count // LANES) * LANES
    source = np.empty(padded * POINT_BYTES, dtype=np.uint8)
    source[: count * POINT_BYTES] = np.frombuffer(points, dtype=np.uint8, count=count * 32)
    source[count * POINT_BYTES :] = np.tile(np.frombuffer(_FILLER, np.uint8), padded - count)
    out = np.empty_like(source)
    offsets = POINT_BYTES * np.arange(padded, dtype=np.uint64)
    source_ptrs = np.uint64(source.ctypes.data) + offsets
    out_ptrs = np.uint64(out.ctypes.data) + offsets
    secret = np.frombuffer(bytes(key), dtype=np.uint8).copy()
    key_ptrs = np.full(LANES, secret.ctypes.data, dtype=np.uint64)
    key_at, src_at, out_at = key_ptrs.ctypes.data, source_ptrs.ctypes.data, out_ptrs.ctypes.data
    step = LANES * 8  # bytes of one call's pointer array

    def run(first: int, last: int) -> int | None:
        """Lanes [first, last); the index of the first low-order element, if any."""
        for lane in range(first, last, LANES):
            status = fn(out_at + step * (lane // LANES), key_at, src_at + step * (lane // LANES))
            if status:
                bad = next(i for i in range(LANES) if (status >> (4 * i)) & 0xF)
                return lane + bad
        return None

    workers = threads or min(os.cpu_count() or 1, 8)
    if workers == 1 or count < _PARALLEL_FROM:
        bad = [run(0, padded)]
    else:
        share = -(-padded // (workers * LANES)) * LANES
        with futures.ThreadPoolExecutor(workers, thread_name_prefix="x25519") as pool:
            jobs = [
                pool.submit(run, start, min(start + share, padded))
                for start in range(0, padded, share)
            ]
            bad = [job.result() for job in jobs]
    found = [index for index in bad if index is not None and index < count]
    if found:
        raise ValueError(f"element {min(found)} is a low-order X25519 point")
    return out[: count * POINT_BYTES].tobytes()
