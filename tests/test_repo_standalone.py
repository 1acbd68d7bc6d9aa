"""The repository stands on its own (issue 9, item 10, and the integrator contract): no file
points readers to documents outside it (a DESIGN.md, a "Wire rules" section, ../shared), and
none names a package-registry host: pip, npm and apt take their index from the machine's
configuration. Nothing may name ../shared, not even `.ci/run`: it looks for MNIST in data/
folders beside the clone."""

from __future__ import annotations

import subprocess

from tests.harness import ROOT

FORBIDDEN = (
    "DESIGN.md",
    "Wire rules",
    "../shared",
    "pypi.org",
    "pythonhosted.org",
    "download.pytorch.org",
    "registry.npmjs.org",
    "deb.debian.org",
    "security.debian.org",
    "archive.ubuntu.com",
)
#: The CI entry point (the CI machine's layout) and this test's own list.
EXEMPT = {"tests/test_repo_standalone.py": FORBIDDEN}


def test_no_file_points_outside_the_repository_or_names_a_registry() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        allowed = EXEMPT.get(name, ())
        found += [f"{name}: {word}" for word in FORBIDDEN if word in text and word not in allowed]
    assert found == []
