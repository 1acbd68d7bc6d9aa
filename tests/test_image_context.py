"""The image's build context: every file docker/Dockerfile COPYs from the context is let in
by .dockerignore (an allow-list). A missing entry only shows when the image is built, late in
CI; this checks it in a second."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def _context_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        sources += [s.rstrip("*") for s in args[:-1]]
    return sources


def test_every_copied_file_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = _context_sources(ROOT / "docker" / "Dockerfile")
    assert "requirements.lock" in sources, sources  # the parser still reads the file
    missing = [s for s in sources if _ignored(s, patterns)]
    assert not missing, f".dockerignore leaves out {missing}: add '!{missing[0]}' to it"
    assert re.search(r"^\*$", (ROOT / ".dockerignore").read_text(), re.M)  # still an allow-list
