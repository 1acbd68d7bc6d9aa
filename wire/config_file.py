"""The settings file both services read (`--config node.toml`, `--config coordinator.toml`):
TOML whose keys are the settings' field names. Kept with the rest of what node and
coordinator share, so both report a bad file the same way."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError


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


def settings_toml(data: dict[str, Any]) -> str:
    """The file `settings_data` reads, for programs that start services (the demo, tests).
    Values are str, numbers, bools or lists of them (their JSON spelling is valid TOML);
    a dict value becomes a table, e.g. a node's `scheduler_args`."""
    plain = [
        f"{key} = {json.dumps(value)}" for key, value in data.items() if not isinstance(value, dict)
    ]
    for table, values in data.items():
        if isinstance(values, dict):
            plain.append(f"[{table}]")
            plain.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(plain) + "\n"


def settings_error(exc: Exception) -> str:
    """One line for a bad setting: pydantic's errors as `field: problem`, without its framing
    (error counts, input echoes, documentation links); other errors as they are."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)
