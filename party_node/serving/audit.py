"""A collaborator's audit log of the ids its serving node was asked about.

An online embedding endpoint lets its caller test whether an id exists at this party, so
each answer is recorded: who asked (the certificate's and the request's node id), when, how
many ids, how many were found, for which batch prediction. Ids are recorded as keyed digests
(BLAKE2b with a key that stays with the log), never in clear: whoever holds the key can
answer "was id X asked about, by whom, when" (`heteronn audit`), a copy of the log alone
reveals nothing. The node's normal log never contains ids at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

KEY_BYTES = 32
DIGEST_BYTES = 10


def load_key(path: Path, create: bool = True) -> bytes:
    """The audit key at `path`, created (mode 0600) on first use when `create`."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no audit key at {path}; it is created beside the log")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise ValueError(f"audit key {path} is shorter than 16 bytes")
    return key


def id_digest(key: bytes, item: str) -> str:
    return hashlib.blake2b(item.encode(), key=key, digest_size=DIGEST_BYTES).hexdigest()


class AuditLog:
    """Append-only JSON lines; one record per answered (or refused) call."""

    def __init__(self, path: Path, key_path: Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = load_key(key_path or self.path.with_suffix(".key"))
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file: TextIO = os.fdopen(fd, "a", encoding="utf-8")

    def record(
        self,
        caller: str,
        rpc: str,
        ids: Sequence[str],
        found: int,
        batch_id: str = "",
        refused: str = "",
        model_id: str = "",
        digests: bool = True,
    ) -> None:
        """One call. `digests` false records the count only: for a batch prediction's calls,
        whose ids were all recorded with its PSI ("Psi" record of the same batch id)."""
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "caller": caller,
            "rpc": rpc,
            "model_id": model_id[:12],
            "ids": len(ids),
            "found": found,
        }
        if batch_id:
            entry["batch_id"] = batch_id
        if refused:
            entry["refused"] = refused
        if digests:
            entry["id_digests"] = [id_digest(self.key, i) for i in ids]
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def lookup(log: Path, key_path: Path, ids: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, record) for every record of `log` that asked about one of `ids`."""
    key = load_key(key_path, create=False)
    wanted = {id_digest(key, i): i for i in ids}
    with Path(log).open(encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            for digest in entry.get("id_digests", ()):
                if digest in wanted:
                    yield wanted[digest], {k: v for k, v in entry.items() if k != "id_digests"}
