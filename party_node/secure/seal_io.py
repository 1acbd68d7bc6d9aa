"""SEAL objects to bytes and back.

TenSEAL's low-level ``sealapi`` only saves to and loads from paths. On Linux each thread keeps
one anonymous in-memory file (``memfd``) and SEAL reads and writes it through
``/proc/self/fd/N``: no directory entry is created or removed per object (on a loaded machine
that was several ms per ciphertext). Elsewhere a private temporary directory is used (mode 0700,
in RAM when ``/dev/shm`` exists). Loading validates the object against the context before any
arithmetic touches it: a malformed blob from a peer is a `SecureProtocolError`, never a crash in
C++.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from tenseal import sealapi

from party_node.secure.errors import SecureProtocolError

_lock = threading.Lock()
_dir: Path | None = None
_local = threading.local()


def _scratch_dir() -> Path:
    global _dir
    with _lock:
        if _dir is None or not _dir.exists():
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            _dir = Path(tempfile.mkdtemp(prefix="heteronn-he-", dir=base))
            os.chmod(_dir, 0o700)
            atexit.register(shutil.rmtree, _dir, True)
        return _dir


class _Scratch:
    """This thread's scratch file: a memfd when the platform has one, else a private file."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            self.fd = os.memfd_create("heteronn-he", os.MFD_CLOEXEC)
            self.path = f"/proc/self/fd/{self.fd}"
        else:
            self.path = str(_scratch_dir() / f"{os.getpid()}-{threading.get_ident()}")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def write(self, data: bytes) -> None:
        """Overwrite in place and cut to length (no freeing and re-allocating every page)."""
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def read(self) -> bytes:
        chunks, offset = [], 0
        while True:
            chunk = os.pread(self.fd, 1 << 20, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)


def _scratch() -> _Scratch:
    scratch = getattr(_local, "scratch", None)
    if scratch is None or scratch.pid != os.getpid():
        scratch = _Scratch()
        scratch.pid = os.getpid()  # a forked child makes its own
        _local.scratch = scratch
    return scratch


def save_bytes(obj: Any) -> bytes:
    """Serialize a SEAL object (ciphertext, Galois keys, serializable keys) to bytes."""
    scratch = _scratch()
    obj.save(scratch.path)
    return scratch.read()


def _load(obj: Any, seal_context: Any, data: bytes, what: str) -> Any:
    if not isinstance(data, bytes | bytearray) or not data:
        raise SecureProtocolError(f"{what}: expected non-empty bytes, got {type(data).__name__}")
    scratch = _scratch()
    scratch.write(bytes(data))
    try:
        obj.load(seal_context, scratch.path)
    except Exception as exc:  # SEAL raises plain ValueError/RuntimeError on bad data
        raise SecureProtocolError(f"{what}: not a valid SEAL object ({exc})") from exc
    if not sealapi.is_valid_for(obj, seal_context):
        raise SecureProtocolError(f"{what}: not valid for the agreed CKKS parameters")
    return obj


def load_ciphertext(seal_context: Any, data: bytes, what: str) -> sealapi.Ciphertext:
    """Load a peer's ciphertext; it must be a 2-component ciphertext for this context."""
    ct = _load(sealapi.Ciphertext(), seal_context, data, what)
    if ct.size() != 2:
        raise SecureProtocolError(f"{what}: ciphertext has {ct.size()} components, expected 2")
    return ct


def load_galois_keys(seal_context: Any, data: bytes, what: str) -> sealapi.GaloisKeys:
    """Load a peer's Galois (rotation) keys."""
    return _load(sealapi.GaloisKeys(), seal_context, data, what)
