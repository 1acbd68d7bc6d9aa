"""The synthetic task of tests/synthetic.py in secure mode, one party per process:
`python -m tests.secure_synthetic --node h --nodes h,c1 --task t [--initiator] ...`.

Every party's feature model outputs OUT columns and is projected to PROJ < OUT columns;
`--bad-in-dim` declares a wrong in_dim for the first collaborator (the seed's own mistake),
`--wide` a projection that keeps its width (refused unless the collaborators pass
`--allow-wide`)."""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from party_node.hetero_nn import SecureHeteroNNCollaboratorScheduler, SecureHeteroNNHostScheduler
from tests.synthetic import (
    CLASSES,
    OUT,
    Faults,
    SynthCollaborator,
    SynthHost,
    party_arguments,
    run_party,
    scheduler_timeouts,
)

PROJECT_LR = 0.05
PROJ = 3


class SecureSynthHost(SynthHost, SecureHeteroNNHostScheduler):
    def build_infer_model(self) -> nn.Module:
        torch.manual_seed(99)
        width = sum(out for _, _, out in self.project_layer_config)
        return nn.Sequential(nn.Linear(width, 6), nn.ReLU(), nn.Linear(6, CLASSES))


class SecureSynthCollaborator(SynthCollaborator, SecureHeteroNNCollaboratorScheduler):
    pass


def main(argv: list[str] | None = None) -> int:
    p = party_arguments(rounds=2, batch_size=64, schedule_timeout=20.0)
    p.add_argument("--lr", type=float, default=PROJECT_LR)
    p.add_argument("--bad-in-dim", action="store_true")
    p.add_argument("--wide", action="store_true")
    p.add_argument("--allow-wide", action="store_true")
    p.add_argument("--declare-shape", default="", help="IN,OUT this collaborator expects")
    p.add_argument("--defence", default="null", help="label_defence as JSON")
    args = p.parse_args(argv)
    nodes = args.nodes.split(",")
    timeouts, faults = scheduler_timeouts(args), Faults(args.faults)
    if args.node == nodes[0]:
        config = [(n, OUT, PROJ) for n in nodes]
        if args.bad_in_dim:
            config[1] = (nodes[1], OUT + 6, PROJ)
        if args.wide:
            config[1] = (nodes[1], OUT, OUT)
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
            args.node,
            args.batch_size,
            faults,
            project_layer_lr=args.lr,
            project_layer_allow_full_width=args.allow_wide,
            project_layer_shape=(
                tuple(int(v) for v in args.declare_shape.split(",")) if args.declare_shape else None
            ),
            **timeouts,
        )
    scheduler.label_defence = json.loads(args.defence)
    return run_party(scheduler, args, nodes)


if __name__ == "__main__":
    sys.exit(main())
