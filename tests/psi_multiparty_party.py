"""One party of a synthetic task whose parties hold different ids, for the multi-party PSI
task test: `python -m tests.psi_multiparty_party --node h --nodes h,c1,c2 --task t ...`
(psi_engine from HETERONN_NODE_PSI_ENGINE).

Each party writes the intersection it trained on to `<node>.intersection.json`. The host
also records its whole view of the PSI for the test to examine: its secret key and every PSI
message a collaborator sent it (`host-view.json`), through a tap on the multi-party glue of
its own process; nothing else changes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from party_node.psi import multiparty, multiparty_rpc
from tests import synthetic

#: Which ids each party holds: the host drops multiples of 5, c1 of 3, c2 every id = 1 mod 4.
DROPS = {"h": (5, 0), "c1": (3, 0), "c2": (4, 1)}


def party_ids(node: str) -> list[str]:
    mod, rem = DROPS[node]
    return [item for item in synthetic.all_ids() if int(item) % mod != rem]


class Ids:
    node: str

    def load_local_ids(self):
        return party_ids(self.node)

    def split_dataset(self, id_intersection):
        Path(f"{self.node}.intersection.json").write_text(json.dumps(sorted(id_intersection)))
        return synthetic.split(id_intersection)


class Host(Ids, synthetic.SynthHost):
    pass


class Collaborator(Ids, synthetic.SynthCollaborator):
    pass


def record_host_view(path: Path) -> None:
    """Keep the host's key and every PSI message its collaborators send it."""
    view: dict = {"keys": [], "received": []}
    make_host = multiparty.MultipartyHost.__init__

    def init(self, *args, **kwargs):
        make_host(self, *args, **kwargs)
        view["keys"].append(self._key.hex())

    multiparty.MultipartyHost.__init__ = init
    frames_from = multiparty_rpc.frames_from

    def tapped(messages, check_header):
        def recorded():
            for message in messages:
                view["received"].append(
                    {
                        "sender": message.header.sender,
                        "step": message.step,
                        "data": message.data.hex(),
                    }
                )
                path.write_text(json.dumps(view))
                yield message

        return frames_from(recorded(), check_header)

    multiparty_rpc.frames_from = tapped


def main(argv: list[str] | None = None) -> int:
    args = synthetic.party_arguments(rounds=1, batch_size=32, schedule_timeout=30).parse_args(argv)
    nodes = args.nodes.split(",")
    timeouts, faults = synthetic.scheduler_timeouts(args), synthetic.Faults(args.faults)
    if args.node == nodes[0]:
        record_host_view(Path("host-view.json"))
        scheduler = Host(args.node, nodes, args.batch_size, args.rounds, faults, **timeouts)
    else:
        scheduler = Collaborator(args.node, args.batch_size, faults, **timeouts)
    return synthetic.run_party(scheduler, args, nodes)


if __name__ == "__main__":
    sys.exit(main())
