"""The seed's host notebook as a script: `python -m examples.mnist_halves.run_host`.
Run `run_collaborator` in a second terminal, in the same working directory."""

from __future__ import annotations

import argparse

from examples.mnist_halves.host import DemoHeteroHost
from party_node import mock_context

HOST_ID = "9afb99da-2e4c-4676-a434-5f312f583947"
COLLABORATOR_ID = "ec72a25c-ff83-47f2-a4bc-74321acace99"
TASK_ID = "5a8c6b50-6267-4258-afb0-a4e7413ead58"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recover", action="store_true")
    args = parser.parse_args()
    scheduler = DemoHeteroHost(
        feature_key="demo_host",
        batch_size=128,  # every party must use the same batch_size
        max_rounds=args.rounds,
        calculation_timeout=1800,
        log_rounds=1,
    )
    with mock_context(id=HOST_ID, nodes=[HOST_ID, COLLABORATOR_ID]):
        scheduler._run(id=HOST_ID, task_id=TASK_ID, is_initiator=True, recover=args.recover)


if __name__ == "__main__":
    main()
