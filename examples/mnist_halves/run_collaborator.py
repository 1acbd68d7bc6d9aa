"""The seed's collaborator notebook as a script (see run_host.py)."""

from __future__ import annotations

import argparse

from examples.mnist_halves.collaborator import DemoHeteroCollaborator
from examples.mnist_halves.run_host import COLLABORATOR_ID, HOST_ID, TASK_ID
from party_node import mock_context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recover", action="store_true")
    args = parser.parse_args()
    scheduler = DemoHeteroCollaborator(feature_key="demo_collaborator", batch_size=128)
    with mock_context(id=COLLABORATOR_ID, nodes=[HOST_ID, COLLABORATOR_ID]):
        scheduler._run(id=COLLABORATOR_ID, task_id=TASK_ID, recover=args.recover)


if __name__ == "__main__":
    main()
