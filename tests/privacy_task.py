"""The synthetic task with a label defence: `python -m tests.privacy_task --node h --nodes h,c1
--task t --defence '{"kind": "gradient_rr", "epsilon": 0, "classes": 3}' ...`. Every party
passes its own --defence (the coordinator compares them at join); --pause slows the
collaborator's rounds so a test can scrape the host's /metrics while the task runs."""

from __future__ import annotations

import json
import sys
import time

from tests import synthetic as syn


class PausingCollaborator(syn.SynthCollaborator):
    def __init__(self, *args, pause: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.pause = pause

    def iterate_train_feature(self, feature_model, train_ids):
        time.sleep(self.pause)
        yield from super().iterate_train_feature(feature_model, train_ids)


def main(argv: list[str] | None = None) -> int:
    parser = syn.party_arguments(rounds=3, batch_size=32, schedule_timeout=10)
    parser.add_argument("--defence", default="null", help="label_defence as JSON")
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    nodes = args.nodes.split(",")
    timeouts, faults = syn.scheduler_timeouts(args), syn.Faults(args.faults)
    if args.node == nodes[0]:
        scheduler = syn.SynthHost(
            args.node, nodes, args.batch_size, args.rounds, faults, **timeouts
        )
    else:
        scheduler = PausingCollaborator(
            args.node, args.batch_size, faults, pause=args.pause, **timeouts
        )
    scheduler.label_defence = json.loads(args.defence)
    return syn.run_party(scheduler, args, nodes)


if __name__ == "__main__":
    sys.exit(main())
