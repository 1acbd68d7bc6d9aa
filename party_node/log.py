"""The `logger` users import (as in the seed), and the CLI's log format."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("heteronn")


def configure(level: int = logging.INFO) -> None:
    """One stderr handler with node/task ids in every line; idempotent."""
    if any(getattr(h, "_heteronn", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._heteronn = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


configure()
