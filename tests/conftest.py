"""Test-session set-up shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

# The MNIST tests start processes in temporary working directories: a relative DATA_ROOT
# (the documented default is ./data) must mean the same folder to all of them.
os.environ["DATA_ROOT"] = str(Path(os.environ.get("DATA_ROOT", "./data")).resolve())
