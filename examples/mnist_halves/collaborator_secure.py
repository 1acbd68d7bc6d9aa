"""The MNIST-halves collaborator in secure mode (the seed's `DemoSecureHeteroCollaborator`):
its features leave it only encrypted; it needs the same `project_layer_lr` as the host."""

from __future__ import annotations

from examples.mnist_halves.collaborator import DemoHeteroCollaborator
from examples.mnist_halves.host_secure import PROJECT_LAYER_LR
from examples.mnist_halves.seeding import pop_seed
from party_node.hetero_nn import SecureHeteroNNCollaboratorScheduler


class DemoSecureHeteroCollaborator(DemoHeteroCollaborator, SecureHeteroNNCollaboratorScheduler):
    def __init__(
        self,
        feature_key: str,
        project_layer_lr: float,
        batch_size: int,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        calculation_timeout: int = 300,
        data_root: str | None = None,
        dropout: bool = True,
        lr: float = 0.01,
    ) -> None:
        SecureHeteroNNCollaboratorScheduler.__init__(
            self,
            feature_key=feature_key,
            project_layer_lr=project_layer_lr,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            calculation_timeout=calculation_timeout,
        )
        self._set_options(batch_size, data_root, dropout, lr)


def make_scheduler(**kwargs) -> DemoSecureHeteroCollaborator:
    """Factory for `heteronn node --scheduler examples.mnist_halves.collaborator_secure:...`."""
    kwargs.setdefault("feature_key", "demo_collaborator")
    pop_seed(kwargs, "demo_collaborator")
    kwargs.setdefault("batch_size", 128)
    kwargs.setdefault("project_layer_lr", PROJECT_LAYER_LR)
    defence = kwargs.pop("label_defence", None)  # every party must pass the same
    scheduler = DemoSecureHeteroCollaborator(**kwargs)
    scheduler.label_defence = defence
    return scheduler
