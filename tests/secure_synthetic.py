"""The synthetic task of tests/synthetic.py in secure mode, one party per process:
`python -m tests.secure_synthetic --node h --nodes h,c1 --task t [--initiator] ...`.

Every party's feature model outputs OUT columns and is projected to OUT columns; `--bad-in-dim`
declares a wrong in_dim for the first collaborator (the seed's own mistake)."""

from __future__ import annotations

import json
import sys

from party_node.hetero_nn import SecureHeteroNNCollaboratorScheduler, SecureHeteroNNHostScheduler
from tests.synthetic import (
    OUT,
    Faults,
    SynthCollaborator,
    SynthHost,
    party_arguments,
    run_party,
    scheduler_timeouts,
)

PROJECT_LR = 0.05


class SecureSynthHost(SynthHost, SecureHeteroNNHostScheduler):
    pass


class SecureSynthCollaborator(SynthCollaborator, SecureHeteroNNCollaboratorScheduler):
    pass


def main(argv: list[str] | None = None) -> int:
    p = party_arguments(rounds=2, batch_size=64, schedule_timeout=20.0)
    p.add_argument("--lr", type=float, default=PROJECT_LR)
    p.add_argument("--bad-in-dim", action="store_true")
    p.add_argument("--defence", default="null", help="label_defence as JSON")
    args = p.parse_args(argv)
    nodes = args.nodes.split(",")
    timeouts, faults = scheduler_timeouts(args), Faults(args.faults)
    if args.node == nodes[0]:
        config = [(n, OUT, OUT) for n in nodes]
        if args.bad_in_dim:
            config[1] = (nodes[1], OUT + 6, OUT)
        scheduler = SecureSynthHost(
            args.node,
            nodes,
            args.batch_size,
            args.rounds,
            faults,
            project_layer_config=config,
            project_layer_lr=args.lr,
            checkpoint_every_batches=args.checkpoint_every,
            **timeouts,
        )
    else:
        scheduler = SecureSynthCollaborator(
            args.node, args.batch_size, faults, project_layer_lr=args.lr, **timeouts
        )
    scheduler.label_defence = json.loads(args.defence)
    return run_party(scheduler, args, nodes)


if __name__ == "__main__":
    sys.exit(main())
