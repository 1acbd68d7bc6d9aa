"""Per-round checkpoints of one party: written at the end of every round, atomically; the
last two are kept so that every party still has the newest round they all completed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from party_node.runtime.outputs import atomic_torch_save

_NAME = re.compile(r"^round_(\d+)\.pt$")
KEEP = 2


class CheckpointStore:
    def __init__(self, directory: Path):
        self.directory = directory

    def rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> int:
        rounds = self.rounds()
        return rounds[-1] if rounds else 0

    def save(self, round_no: int, state: dict[str, Any]) -> None:
        atomic_torch_save({"round": round_no, **state}, self.directory / f"round_{round_no}.pt")
        for old in self.rounds()[:-KEEP]:
            (self.directory / f"round_{old}.pt").unlink(missing_ok=True)

    def load(self, round_no: int) -> dict[str, Any]:
        path = self.directory / f"round_{round_no}.pt"
        if not path.is_file():
            have = self.rounds() or "none"
            raise FileNotFoundError(
                f"no checkpoint for round {round_no} in {self.directory} (have: {have}); "
                "the parties' outputs are out of step — restart without recover to train afresh"
            )
        # Local file written by this node; weights_only keeps it to tensors and plain data.
        return torch.load(path, weights_only=True)
