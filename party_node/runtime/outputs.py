"""Where a task's files go: ``<workdir>/<node_id>/<task_id>/`` (checkpoints, TensorBoard
logs, final models, report.json), written atomically so nothing is ever half-written."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch.utils.tensorboard import SummaryWriter

from wire.limits import check_id


def output_dir(workdir: Path, node_id: str, task_id: str) -> Path:
    """``<workdir>/<node_id>/<task_id>``; ValueError unless both ids are one safe path
    component and the resolved folder lies inside the work dir (no `..`, no absolute ids,
    no symlink out)."""
    for what, value in (("node_id", node_id), ("task_id", task_id)):
        check_id(what, value)
    root = Path(workdir).resolve()
    path = (root / node_id / task_id).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"output folder {path} is not inside the work dir {root}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, rename: a crash leaves the old file or the new one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to a temp file beside `path`, fsync it, rename it over `path`, fsync the folder
    (so the rename itself survives a power loss)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


class RecordingWriter(SummaryWriter):
    """A SummaryWriter that also remembers the last value of every scalar tag, so the
    framework can report test accuracy/loss without asking user code for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_scalars: dict[str, float] = {}

    def add_scalar(self, tag: str, scalar_value: Any, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(TypeError, ValueError):
            self.last_scalars[tag] = float(scalar_value)
        super().add_scalar(tag, scalar_value, *args, **kwargs)


def test_metrics(scalars: dict[str, float]) -> dict[str, float]:
    """Pick accuracy/loss from the scalar tags user code logged (e.g. 'test_results/accuracy')."""
    metrics: dict[str, float] = {}
    for tag, value in scalars.items():
        leaf = tag.rsplit("/", 1)[-1].lower()
        if leaf in ("accuracy", "acc"):
            metrics["accuracy"] = value
        elif leaf in ("loss", "average_loss", "test_loss"):
            metrics["loss"] = value
    return metrics
