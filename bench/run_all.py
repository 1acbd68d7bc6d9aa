"""`make bench`: every benchmark in turn; each prints a JSON object as its last line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = [
    "psi_bench",
    "plain_vs_centralized",
    "he_steps",
    "secure_vs_plain",
    "label_leak",
    "checkpoint_cost",
    "predict_bench",
    "wan",
]


def main() -> int:
    failed = []
    for name in BENCHES:
        if not (Path(__file__).parent / f"{name}.py").is_file():
            continue
        print(f"== bench.{name}", file=sys.stderr, flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
