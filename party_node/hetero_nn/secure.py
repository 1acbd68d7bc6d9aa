"""The secure (CKKS) HeteroNN schedulers: the plain API plus `project_layer_config` (host) and
`project_layer_lr` (every party), as in alphafed.hetero_nn. `train_a_batch` and `run_test`
receive each party's *projected* features (out_dim columns); see docs/secure-protocol.md."""

from __future__ import annotations

from collections.abc import Sequence

from party_node.errors import ConfigError
from party_node.hetero_nn.collaborator import HeteroNNCollaboratorScheduler
from party_node.hetero_nn.host import CHECKPOINT_EVERY_SECONDS, HeteroNNHostScheduler
from party_node.secure import (
    secure_params,
    validate_host_config,
    validate_project_layer_lr,
    validate_projection_shape,
)


def _bounds(scheduler: object, feature_bound: object, delta_bound: object) -> None:
    """The value bounds every party must agree on (masks and noise derive from them)."""
    params = secure_params(feature_bound, delta_bound)
    scheduler.project_layer_feature_bound = params.feature_bound
    scheduler.project_layer_delta_bound = params.delta_bound


def _lr_and_momentum(lr: object, momentum: object) -> tuple[float, float]:
    value = validate_project_layer_lr(lr)
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
        raise ConfigError(f"project_layer_momentum must be in [0, 1), got {momentum!r}")
    return value, float(momentum)


class SecureHeteroNNHostScheduler(HeteroNNHostScheduler):
    """Seed-compatible `SecureHeteroNNHostScheduler`.

    project_layer_config: one (feature_key, in_dim, out_dim) per party, the host included;
        in_dim is the width of that party's feature model output.
    project_layer_lr: learning rate of the projections (SGD with `project_layer_momentum`);
        every party must pass the same value.
    project_layer_feature_bound, project_layer_delta_bound: bounds on |collaborator features|
        and |∂L/∂projection| (masks and noise are sized from them); equal at every party.
    """

    _secure = True

    def __init__(
        self,
        feature_key: str,
        project_layer_config: Sequence[tuple[str, int, int]],
        project_layer_lr: float,
        max_rounds: int = 0,
        calculation_timeout: int = 300,
        log_rounds: int = 0,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        project_layer_momentum: float = 0.9,
        project_layer_feature_bound: float = 64.0,
        project_layer_delta_bound: float = 0.125,
        checkpoint_every_batches: int = 0,
        checkpoint_every_seconds: float = CHECKPOINT_EVERY_SECONDS,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            log_rounds=log_rounds,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            checkpoint_every_batches=checkpoint_every_batches,
            checkpoint_every_seconds=checkpoint_every_seconds,
        )
        # Shapes and types now; the key set once the task's participants are known.
        validate_host_config(project_layer_config, feature_key)
        self.project_layer_config = [tuple(entry) for entry in project_layer_config]
        self.project_layer_lr, self.project_layer_momentum = _lr_and_momentum(
            project_layer_lr, project_layer_momentum
        )
        _bounds(self, project_layer_feature_bound, project_layer_delta_bound)


class SecureHeteroNNCollaboratorScheduler(HeteroNNCollaboratorScheduler):
    """Seed-compatible `SecureHeteroNNCollaboratorScheduler`.

    project_layer_lr: must equal the host's (checked at join); the collaborator steps its share
        of its projection with it. Its projection's shape comes from the host's config.
    project_layer_shape: optional (in_dim, out_dim) this party expects; the coordinator refuses
        a host config that differs.
    project_layer_allow_full_width: accept a projection with out_dim >= in_dim (refused by
        default: z = X·W would then reveal X to the host).
    project_layer_feature_bound, project_layer_delta_bound: as at the host.
    """

    _secure = True

    def __init__(
        self,
        feature_key: str,
        project_layer_lr: float,
        schedule_timeout: int = 30,
        is_feature_trainable: bool = True,
        calculation_timeout: int = 300,
        project_layer_momentum: float = 0.9,
        project_layer_shape: tuple[int, int] | None = None,
        project_layer_allow_full_width: bool = False,
        project_layer_feature_bound: float = 64.0,
        project_layer_delta_bound: float = 0.125,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            schedule_timeout=schedule_timeout,
            is_feature_trainable=is_feature_trainable,
            calculation_timeout=calculation_timeout,
        )
        self.project_layer_lr, self.project_layer_momentum = _lr_and_momentum(
            project_layer_lr, project_layer_momentum
        )
        _bounds(self, project_layer_feature_bound, project_layer_delta_bound)
        self.project_layer_shape = validate_projection_shape(project_layer_shape, feature_key)
        if not isinstance(project_layer_allow_full_width, bool):
            raise ConfigError("project_layer_allow_full_width must be True or False")
        self.project_layer_allow_full_width = project_layer_allow_full_width
