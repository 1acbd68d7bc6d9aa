"""SEAL objects to bytes and back.

TenSEAL's low-level ``sealapi`` only saves to and loads from files, so we go through a private
temporary directory (mode 0700, in RAM when ``/dev/shm`` exists). Loading validates the object
against the context before any arithmetic touches it: a malformed blob from a peer is a
`SecureProtocolError`, never a crash in C++.
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


def _scratch_dir() -> Path:
    global _dir
    with _lock:
        if _dir is None or not _dir.exists():
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            _dir = Path(tempfile.mkdtemp(prefix="heteronn-he-", dir=base))
            os.chmod(_dir, 0o700)
            atexit.register(shutil.rmtree, _dir, True)
        return _dir


def _path() -> Path:
    return _scratch_dir() / f"{os.getpid()}-{threading.get_ident()}-{os.urandom(6).hex()}"


def save_bytes(obj: Any) -> bytes:
    """Serialize a SEAL object (ciphertext, Galois keys, serializable keys) to bytes."""
    path = _path()
    try:
        obj.save(str(path))
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def _load(obj: Any, seal_context: Any, data: bytes, what: str) -> Any:
    if not isinstance(data, bytes | bytearray) or not data:
        raise SecureProtocolError(f"{what}: expected non-empty bytes, got {type(data).__name__}")
    path = _path()
    try:
        path.write_bytes(bytes(data))
        try:
            obj.load(seal_context, str(path))
        except Exception as exc:  # SEAL raises plain ValueError/RuntimeError on bad data
            raise SecureProtocolError(f"{what}: not a valid SEAL object ({exc})") from exc
    finally:
        path.unlink(missing_ok=True)
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
