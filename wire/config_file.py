"""The settings file both services read (`--config node.toml`, `--config coordinator.toml`):
TOML whose keys are the settings' field names. Kept with the rest of what node and
coordinator share, so both report a bad file the same way."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def settings_data(config: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's keys, then `overrides` (command-line options) that were given on top;
    ValueError names a missing or malformed file."""
    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text())
        except FileNotFoundError:
            raise ValueError(f"config file {config} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {config} is not valid TOML: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data
