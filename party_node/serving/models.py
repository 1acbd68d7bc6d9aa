"""A party's models, loaded from its verified bundle for serving: the TorchScript feature
model every party runs on its own rows, the host's traced predictor, and in secure mode the
shares of the projections. A bundle that cannot serve (a model that did not trace, a host
without predict_a_batch) is refused here with the reason recorded when it was written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from party_node.errors import BundleError
from party_node.serving.bundle import Bundle


def _script(bundle: Bundle, key: str, what: str) -> torch.jit.ScriptModule:
    entry = bundle.manifest.get(key) or {}
    name = entry.get("script")
    if not name:
        reason = entry.get("error") or f"the bundle has no {what}"
        raise BundleError(f"bundle {bundle.path} cannot serve: {reason}")
    return bundle.load_script(name)


def _width(entry: dict[str, Any], what: str) -> int:
    shape = entry.get("output_shape") or []
    if len(shape) != 1:
        raise BundleError(
            f"the {what} outputs rows of shape {shape}; serving needs one vector per id "
            "(rows of shape [width])"
        )
    return int(shape[0])


@dataclass
class CollaboratorModel:
    feature_model: torch.jit.ScriptModule
    #: Columns of one embedding (the feature model's output).
    width: int
    #: Secure mode: this party's share V of its projection (in_dim x out_dim).
    share: torch.Tensor | None = None


@dataclass
class HostModel:
    feature_model: torch.jit.ScriptModule
    predictor: torch.jit.ScriptModule
    #: The predictor's inputs, in order: every party's feature key.
    keys: list[str]
    #: Columns the predictor expects from each party (its projection's width).
    widths: dict[str, int]
    #: Columns of the model's output (Prediction.scores).
    output_width: int
    #: Secure mode: the host's own projection, its shares U by collaborator feature key, and
    #: every projection's (in_dim, out_dim).
    projection: nn.Module | None = None
    shares: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)


def load_collaborator_model(bundle: Bundle) -> CollaboratorModel:
    m = bundle.manifest
    model = CollaboratorModel(
        feature_model=_script(bundle, "feature_model", "feature model"),
        width=_width(m["feature_model"], "feature model"),
    )
    if bundle.mode == "secure":
        entry = m.get("projection") or {}
        if not entry.get("share"):
            raise BundleError(f"secure bundle {bundle.path} holds no projection share")
        share = bundle.load_state(entry["share"])["v"]
        if tuple(share.shape) != (model.width, int(entry["out_dim"])):
            raise BundleError(
                f"bundle {bundle.path}: the projection share has shape {list(share.shape)}, the "
                f"feature model outputs {model.width} columns"
            )
        model.share = share
    return model


def load_host_model(bundle: Bundle) -> HostModel:
    m = bundle.manifest
    predictor_entry = m.get("predictor") or {}
    predictor = _script(bundle, "predictor", "predictor")
    keys = list(predictor_entry["keys"])
    widths = {
        k: int(inp["shape"][0]) for k, inp in zip(keys, predictor_entry["inputs"], strict=True)
    }
    model = HostModel(
        feature_model=_script(bundle, "feature_model", "feature model"),
        predictor=predictor,
        keys=keys,
        widths=widths,
        output_width=_width(predictor_entry, "predictor"),
    )
    if bundle.mode == "secure":
        entry = m.get("projection") or {}
        model.shapes = {k: (int(v[0]), int(v[1])) for k, v in entry["shapes"].items()}
        in_dim, out_dim = model.shapes[bundle.feature_key]
        projection = nn.Linear(in_dim, out_dim, bias=False)
        projection.load_state_dict(bundle.load_state(entry["host"]))
        model.projection = projection.eval()
        model.shares = dict(bundle.load_state(entry["shares"]))
    return model
