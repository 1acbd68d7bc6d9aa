"""The MNIST-halves host in secure mode (the seed's `DemoSecureHeteroHost`): the same task,
with each party's 20 feature columns projected to 10 through the CKKS layer."""

from __future__ import annotations

from torch import nn

from examples.mnist_halves.host import DemoHeteroHost
from examples.mnist_halves.model import FEATURE_DIM, InferModule
from examples.mnist_halves.seeding import pop_seed
from party_node.hetero_nn import SecureHeteroNNHostScheduler

PROJECTED = 10
#: The seed's example declares in_dim 10 here; HalfConvNet outputs 20 columns.
PROJECT_LAYER_CONFIG = [
    ("demo_host", FEATURE_DIM, PROJECTED),
    ("demo_collaborator", FEATURE_DIM, PROJECTED),
]
PROJECT_LAYER_LR = 0.01


class DemoSecureHeteroHost(DemoHeteroHost, SecureHeteroNNHostScheduler):
    def __init__(
        self,
        feature_key: str,
        project_layer_config: list[tuple[str, int, int]],
        project_layer_lr: float,
        batch_size: int,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        log_rounds: int = 0,
        schedule_timeout: int = 30,
        data_root: str | None = None,
        other_key: str = "demo_collaborator",
        dropout: bool = True,
        lr: float = 0.01,
    ) -> None:
        SecureHeteroNNHostScheduler.__init__(
            self,
            feature_key=feature_key,
            project_layer_config=project_layer_config,
            project_layer_lr=project_layer_lr,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            log_rounds=log_rounds,
            schedule_timeout=schedule_timeout,
        )
        self._set_options(batch_size, data_root, other_key, dropout, lr)

    def build_infer_model(self) -> nn.Module:
        # train_a_batch/run_test get the projections: 10 + 10 columns.
        return InferModule(in_features=sum(out for _, _, out in self.project_layer_config))


def make_scheduler(**kwargs) -> DemoSecureHeteroHost:
    """Factory for `heteronn node --scheduler examples.mnist_halves.host_secure:make_scheduler`."""
    kwargs.setdefault("feature_key", "demo_host")
    pop_seed(kwargs, "demo_host")
    kwargs.setdefault("batch_size", 128)
    kwargs.setdefault("project_layer_config", PROJECT_LAYER_CONFIG)
    kwargs.setdefault("project_layer_lr", PROJECT_LAYER_LR)
    defence = kwargs.pop("label_defence", None)  # every party must pass the same
    scheduler = DemoSecureHeteroHost(**kwargs)
    scheduler.label_defence = defence
    return scheduler
