"""A missing or malformed settings file, or a setting of the wrong type, stops either
service at once with one line that names the file or the setting and what is wrong with it
(exit 2, nothing started, no pydantic error dump)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import ROOT

COMMANDS = {
    "node": ["node", "--scheduler=examples.mnist_halves.host:make_scheduler"],
    "coordinator": ["coordinator"],
}


@pytest.mark.parametrize("service", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "config file {config} does not exist"),
        ('listen = "127.0.0.1:0\n', "config file {config} is not valid TOML: Illegal"),
        ("listen = 5\n", "listen: Input should be a valid string"),
    ],
    ids=["missing", "malformed", "wrong-type"],
)
def test_bad_config_file_is_one_line_naming_it(tmp_path, service, content, problem):
    config = tmp_path / f"{service}.toml"
    if content is not None:
        config.write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "party_node.cli", *COMMANDS[service], f"--config={config}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"heteronn {service}: "), done.stderr
    assert problem.format(config=config) in lines[0], lines[0]
    assert "pydantic" not in done.stderr
