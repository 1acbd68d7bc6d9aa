"""Checks of a secure task's configuration, run before the first batch.

Every error says what is wrong and what to write instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from party_node.secure.errors import SecureConfigError
from party_node.secure.params import SecureParams

ProjectLayerConfig = Sequence[tuple[str, int, int]]


def validate_project_layer_config(
    config: ProjectLayerConfig, feature_keys: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """Entries are (feature_key, in_dim, out_dim) with positive ints, one per task feature key.

    Returns {feature_key: (in_dim, out_dim)}.
    """
    keys = list(feature_keys)
    shapes: dict[str, tuple[int, int]] = {}
    for entry in config:
        if not (isinstance(entry, tuple | list) and len(entry) == 3):
            raise SecureConfigError(
                f"project_layer_config entry {entry!r} must be (feature_key, in_dim, out_dim)"
            )
        key, in_dim, out_dim = entry
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SecureConfigError(
                    f"project_layer_config entry for {key!r}: {name} must be a positive int, "
                    f"got {value!r}"
                )
        if key in shapes:
            raise SecureConfigError(f"project_layer_config lists {key!r} twice; keep one entry")
        shapes[key] = (in_dim, out_dim)
    missing = [k for k in keys if k not in shapes]
    unknown = [k for k in shapes if k not in keys]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"has no entry for {missing} (add (key, in_dim, out_dim) for each)")
        if unknown:
            parts.append(f"names {unknown}, which no party of this task uses")
        raise SecureConfigError(
            "project_layer_config " + " and ".join(parts) + f"; the task's feature keys are {keys}"
        )
    return shapes


def validate_host_config(config: object, feature_key: str) -> dict[str, tuple[int, int]]:
    """What the host can check before it knows the participants: every entry's shape and
    types, and an entry for its own feature_key. Returns {feature_key: (in_dim, out_dim)}."""
    if isinstance(config, str | bytes) or not isinstance(config, Sequence):
        raise SecureConfigError(
            "project_layer_config must be a list of (feature_key, in_dim, out_dim) tuples"
        )
    keys = [e[0] for e in config if isinstance(e, tuple | list) and e]
    shapes = validate_project_layer_config(config, keys)
    if feature_key not in shapes:
        raise SecureConfigError(
            f"project_layer_config has no entry for the host's own feature_key "
            f"'{feature_key}'; add ('{feature_key}', in_dim, out_dim)"
        )
    return shapes


def check_feature_width(feature_key: str, in_dim: int, out_dim: int, width: int) -> None:
    """The declared in_dim must be the width the party's feature model actually outputs."""
    if width != in_dim:
        raise SecureConfigError(
            f"project_layer_config declares in_dim={in_dim} for '{feature_key}' but its feature "
            f"model outputs {width} columns; set ('{feature_key}', {width}, {out_dim})"
        )


def validate_project_layer_lr(lr: object) -> float:
    """A finite learning rate > 0 (ints accepted: the seed's collaborator annotates it int)."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise SecureConfigError(f"project_layer_lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def agreement_value(lr: float, momentum: float, params: SecureParams | None = None) -> str:
    """The string each party reports for the coordinator's `agreement` map (must be equal)."""
    return (params or SecureParams()).agreement(validate_project_layer_lr(lr), momentum)


def check_agreement(values: Mapping[str, str]) -> None:
    """All parties reported the same secure-layer settings (lr, momentum, CKKS, masks)."""
    distinct = set(values.values())
    if len(distinct) > 1:
        listing = "; ".join(f"{node}: {value}" for node, value in sorted(values.items()))
        raise SecureConfigError(
            "parties disagree on the secure projection settings (project_layer_lr must be equal "
            f"at every party): {listing}"
        )


#: Prefix of the coordinator agreement keys that carry one projection's shape each.
SHAPE_AGREEMENT_PREFIX = "secure_projection_shape:"


def shape_agreement(shapes: Mapping[str, tuple[int, int]]) -> dict[str, str]:
    """One agreement entry per projection, '<in_dim>-><out_dim>': a collaborator that declares
    its projection_shape reports its own, and the coordinator refuses any difference."""
    return {f"{SHAPE_AGREEMENT_PREFIX}{key}": f"{i}->{o}" for key, (i, o) in shapes.items()}


def check_reduces_width(feature_key: str, in_dim: int, out_dim: int, allow: bool) -> None:
    """A projection that keeps the width lets the host solve z = X·W for X; the collaborator
    refuses it unless it opted in."""
    if out_dim >= in_dim and not allow:
        raise SecureConfigError(
            f"the host's project_layer_config projects '{feature_key}' from {in_dim} to "
            f"{out_dim} columns, which does not reduce its width, so z = X·W would reveal the "
            f"features; refusing. Declare out_dim < {in_dim} in the host's project_layer_config, "
            "or pass project_layer_allow_full_width=True to this collaborator's scheduler to "
            "accept it"
        )


def secure_params(feature_bound: object, delta_bound: object) -> SecureParams:
    """The agreed parameters for the given bounds (positive finite numbers)."""
    for name, value in (
        ("project_layer_feature_bound", feature_bound),
        ("project_layer_delta_bound", delta_bound),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise SecureConfigError(f"{name} must be a finite number > 0, got {value!r}")
    try:
        return SecureParams(feature_bound=float(feature_bound), delta_bound=float(delta_bound))
    except ValueError as exc:
        raise SecureConfigError(str(exc)) from None


def validate_projection_shape(shape: object, feature_key: str) -> tuple[int, int] | None:
    """A collaborator's optional declared (in_dim, out_dim)."""
    if shape is None:
        return None
    if not (
        isinstance(shape, tuple | list)
        and len(shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        raise SecureConfigError(
            f"project_layer_shape for '{feature_key}' must be (in_dim, out_dim) with positive "
            f"ints, got {shape!r}"
        )
    return int(shape[0]), int(shape[1])
