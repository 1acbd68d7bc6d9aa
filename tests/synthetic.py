"""A small deterministic vertical task for integration tests, runnable as one party per
process: `python -m tests.synthetic --node h --nodes h,c1 --task t [--initiator] ...`.

Rows are ids "0".."N-1"; every party derives its own columns from a fixed seed, the host
also the labels. Models have no dropout, so federated training must equal centralized
training of the composed model step for step. Fault flags inject the failures the tests check."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim

from party_node import TaskFailed, mock_context
from party_node.hetero_nn import (
    HeteroNNCollaboratorScheduler,
    HeteroNNHostScheduler,
    aligned_order,
)

N_ROWS = 192
N_TEST = 64
WIDTH = {"h": 5, "c1": 4, "c2": 3, "c3": 2, "x": 2}
OUT = 4
CLASSES = 3
LR = 0.05


def columns(node: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + sum(map(ord, node)))
    return torch.randn(N_ROWS + N_TEST, WIDTH[node], generator=g)


def labels() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, CLASSES, (N_ROWS + N_TEST,), generator=g)


def feature_model(node: str) -> nn.Module:
    torch.manual_seed(100 + sum(map(ord, node)))
    return nn.Sequential(nn.Linear(WIDTH[node], 8), nn.Tanh(), nn.Linear(8, OUT))


def infer_model(n_parties: int) -> nn.Module:
    torch.manual_seed(99)
    return nn.Sequential(nn.Linear(OUT * n_parties, 6), nn.ReLU(), nn.Linear(6, CLASSES))


def make_optimizer(model: nn.Module) -> optim.Optimizer:
    return optim.SGD(model.parameters(), lr=LR, momentum=0.9)


def all_ids() -> list[str]:
    return [str(i) for i in range(N_ROWS + N_TEST)]


def split(ids: set[str]) -> tuple[set[str], set[str]]:
    train = {i for i in ids if int(i) < N_ROWS}
    return train, set(ids) - train


def batches(ids: list[str], batch_size: int) -> list[torch.Tensor]:
    rows = torch.tensor([int(i) for i in ids])
    return [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]


class Faults:
    def __init__(self, spec: str):
        self.spec = dict(item.split("=", 1) for item in spec.split(",") if item)

    def at(self, name: str, round_no: int) -> bool:
        return name in self.spec and int(self.spec[name]) == round_no

    def kill_in(self, phase: str, round_no: int = 0) -> None:
        """`kill_in_<phase>=R`: SIGKILL this process in that phase (of round R; 0 for PSI and
        SPLIT), with no goodbye to anyone; the host's embedded coordinator dies with it."""
        if self.at(f"kill_in_{phase}", round_no):
            os.kill(os.getpid(), signal.SIGKILL)

    def pace(self) -> None:
        """`slow=S`: every training batch takes S seconds more (so a test can kill mid-round)."""
        if "slow" in self.spec:
            time.sleep(float(self.spec["slow"]))


class SynthParty:
    """What the synthetic host and collaborator do alike: ids, split, feature model."""

    node: str

    faults: Faults

    def load_local_ids(self):  # called when the coordinator has moved the task to PSI
        self.faults.kill_in("psi")
        return all_ids()

    def split_dataset(self, id_intersection):
        self.faults.kill_in("split")
        return split(id_intersection)

    def build_feature_model(self):
        return feature_model(self.node)

    def build_feature_optimizer(self, feature_model):
        return make_optimizer(feature_model)


class SynthHost(SynthParty, HeteroNNHostScheduler):
    def __init__(
        self, node: str, keys: list[str], batch_size: int, rounds: int, faults: Faults, **kwargs
    ):
        super().__init__(feature_key=node, max_rounds=rounds, log_rounds=1, **kwargs)
        self.node, self.keys, self.batch_size, self.faults = node, keys, batch_size, faults
        self.x, self.y = columns(node), labels()

    def build_infer_model(self):
        return infer_model(len(self.keys))

    def build_infer_optimizer(self, infer_model):
        return make_optimizer(infer_model)

    def iterate_train_feature(self, feature_model, train_ids):
        if self.faults.at("host_kill", self.current_round):
            # SIGKILL at the start of this round, i.e. right after the previous round's test:
            # the embedded coordinator dies with the host, before it can mark anything.
            os.kill(os.getpid(), signal.SIGKILL)
        order = aligned_order(train_ids, self.current_round)
        for rows in batches(order, self.batch_size):
            self.faults.pace()
            yield feature_model(self.x[rows]), self.y[rows]

    def iterate_test_feature(self, feature_model, test_ids):
        for rows in batches(list(test_ids), self.batch_size):
            yield feature_model(self.x[rows]), self.y[rows]

    def train_a_batch(self, feature_projection, labels):
        if self.faults.at("host_raise", self.current_round):
            raise ValueError("injected failure in train_a_batch")
        if self.faults.at("host_sleep", self.current_round):
            time.sleep(3600)
        keys = self.keys if not self.faults.at("bad_key", self.current_round) else ["nope"]
        fused = torch.cat([feature_projection[k] for k in keys], dim=1)
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.infer_model(fused), labels)
        loss.backward()
        self.optimizer.step()

    def run_test(self, batched_feature_projection, batched_labels):
        if self.faults.at("test_raise", self.current_round):
            raise RuntimeError("injected failure in run_test")
        self.faults.kill_in("test", self.current_round)
        correct = total = 0
        for projection, y in zip(batched_feature_projection, batched_labels, strict=True):
            out = self.infer_model(torch.cat([projection[k] for k in self.keys], dim=1))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
        self.tb_writer.add_scalar("test/accuracy", correct / total, self.current_round)


class SynthCollaborator(SynthParty, HeteroNNCollaboratorScheduler):
    def __init__(self, node: str, batch_size: int, faults: Faults, **kwargs):
        super().__init__(feature_key=node, **kwargs)
        self.node, self.batch_size, self.faults = node, batch_size, faults
        self.x = columns(node)

    def iterate_train_feature(self, feature_model, train_ids):
        order = aligned_order(train_ids, self.current_round)
        for b, rows in enumerate(batches(order, self.batch_size)):
            if self.faults.at("die", self.current_round) and b == 2:
                os._exit(17)  # a crash: no goodbye to anyone
            if self.faults.at("short", self.current_round) and b == 5:
                return  # one batch fewer than the host
            self.faults.pace()
            yield feature_model(self.x[rows])
        if self.faults.at("die_at_end", self.current_round):
            os._exit(17)  # every batch done (and checkpointed), the round's end not sent

    def iterate_test_feature(self, feature_model, test_ids):
        for rows in batches(list(test_ids), self.batch_size):
            yield feature_model(self.x[rows])


def party_arguments(
    rounds: int, batch_size: int, schedule_timeout: float
) -> argparse.ArgumentParser:
    """The command line every synthetic party script takes (defaults differ per script)."""
    p = argparse.ArgumentParser()
    p.add_argument("--node", required=True)
    p.add_argument("--nodes", required=True, help="comma-separated; the first is the host")
    p.add_argument("--task", required=True)
    p.add_argument("--initiator", action="store_true")
    p.add_argument("--recover", action="store_true")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--schedule-timeout", type=float, default=schedule_timeout)
    p.add_argument("--calculation-timeout", type=float, default=60)
    p.add_argument("--faults", default="")
    p.add_argument(
        "--training-mode", default=None, help="'exact', 'pipelined' or 'pipelined:DEPTH'"
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="host: checkpoint every N batches"
    )
    return p


def scheduler_timeouts(args: argparse.Namespace) -> dict[str, float]:
    return {
        "schedule_timeout": args.schedule_timeout,
        "calculation_timeout": args.calculation_timeout,
    }


def run_party(scheduler: Any, args: argparse.Namespace, context_nodes: list[str]) -> int:
    """The seed's way in (mock_context + _run); exit 1 with the reason when the task fails."""
    if args.training_mode is not None:
        scheduler.training_mode = args.training_mode
    try:
        with mock_context(id=args.node, nodes=context_nodes):
            scheduler._run(
                id=args.node, task_id=args.task, is_initiator=args.initiator, recover=args.recover
            )
    except TaskFailed as exc:
        print(f"task failed: {exc.reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = party_arguments(rounds=3, batch_size=32, schedule_timeout=10).parse_args(argv)
    nodes = args.nodes.split(",")
    timeouts, faults = scheduler_timeouts(args), Faults(args.faults)
    if args.node == nodes[0]:
        scheduler = SynthHost(
            args.node,
            nodes,
            args.batch_size,
            args.rounds,
            faults,
            checkpoint_every_batches=args.checkpoint_every,
            **timeouts,
        )
    else:
        scheduler = SynthCollaborator(args.node, args.batch_size, faults, **timeouts)
    # A node missing from --nodes believes it belongs: the coordinator must refuse it.
    return run_party(scheduler, args, nodes if args.node in nodes else [*nodes, args.node])


if __name__ == "__main__":
    sys.exit(main())
