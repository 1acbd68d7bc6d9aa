"""One party's checkpoints: its whole training state at a position of the task, written
atomically (temp file, fsync, rename, fsync of the folder), so a crash at any instant leaves
the previous checkpoint or the new one and never a half-written file under a checkpoint's name.

A position is (complete rounds, batches of the next round): `round_3.pt` is the end of round 3,
`round_4_batch_40.pt` is 40 batches into round 4. Every party checkpoints the same positions
(the host picks mid-round ones and tells the collaborators on that batch's messages), so a
party is at most one checkpoint ahead of another: keeping the last two means every party
still has the newest position they all reached.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from party_node.runtime.outputs import atomic_torch_save, atomic_write_bytes

_ROUND_END = re.compile(r"^round_(\d+)\.pt$")
_MID_ROUND = re.compile(r"^round_(\d+)_batch_(\d+)\.pt$")
#: Temp files of interrupted writes (atomic_write's prefix); removed when the store opens.
_PARTIAL = re.compile(r"^\.(round_.*\.pt|progress\.json)\.")
KEEP = 2
PROGRESS = "progress.json"


@dataclass(frozen=True, order=True)
class Position:
    """Where in a task a checkpoint was taken: `rounds` complete, then `batches` of the next."""

    rounds: int = 0
    batches: int = 0

    @property
    def filename(self) -> str:
        if self.batches:
            return f"round_{self.rounds + 1}_batch_{self.batches}.pt"
        return f"round_{self.rounds}.pt"

    @classmethod
    def parse(cls, name: str) -> Position | None:
        if m := _ROUND_END.match(name):
            return cls(int(m.group(1)), 0)
        if (m := _MID_ROUND.match(name)) and int(m.group(1)) > 0 and int(m.group(2)) > 0:
            return cls(int(m.group(1)) - 1, int(m.group(2)))
        return None

    def __str__(self) -> str:
        if self.batches:
            return f"round {self.rounds + 1} batch {self.batches}"
        return f"the end of round {self.rounds}" if self.rounds else "the start"


class CheckpointStore:
    def __init__(self, directory: Path):
        self.directory = directory
        if directory.is_dir():  # what a crash mid-write left behind
            for stale in directory.iterdir():
                if _PARTIAL.match(stale.name):
                    stale.unlink(missing_ok=True)

    def positions(self) -> list[Position]:
        if not self.directory.is_dir():
            return []
        found = (Position.parse(p.name) for p in self.directory.iterdir())
        return sorted(p for p in found if p is not None)

    def rounds(self) -> list[int]:
        """Rounds with an end-of-round checkpoint."""
        return [p.rounds for p in self.positions() if not p.batches]

    def latest(self) -> Position:
        positions = self.positions()
        return positions[-1] if positions else Position()

    def save(self, position: Position, state: dict[str, Any]) -> None:
        record = {"round": position.rounds, "batch": position.batches, **state}
        atomic_torch_save(record, self.directory / position.filename)
        for old in self.positions()[:-KEEP]:
            (self.directory / old.filename).unlink(missing_ok=True)

    def load(self, position: Position) -> dict[str, Any]:
        path = self.directory / position.filename
        if not path.is_file():
            have = ", ".join(str(p) for p in self.positions()) or "none"
            raise FileNotFoundError(
                f"no checkpoint for {position} in {self.directory} (have: {have}); the parties' "
                "outputs are out of step — restart without recover to train afresh"
            )
        # Local file written by this node; weights_only keeps it to tensors and plain data.
        return torch.load(path, weights_only=True)

    def discard_after(self, position: Position) -> None:
        """Drop checkpoints past `position`: the task resumes there, so anything newer belongs
        to a run that is being redone (and in secure mode would not match the peers' shares)."""
        for newer in self.positions():
            if newer > position:
                (self.directory / newer.filename).unlink(missing_ok=True)
        if position == Position():
            (self.directory / PROGRESS).unlink(missing_ok=True)

    # ---- what happened besides training: tests already run -----------------------------------
    def progress(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / PROGRESS).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def save_progress(self, progress: dict[str, Any]) -> None:
        data = json.dumps(progress, sort_keys=True).encode()
        atomic_write_bytes(self.directory / PROGRESS, data)
