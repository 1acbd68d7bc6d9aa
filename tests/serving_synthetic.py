"""The synthetic task (tests.synthetic) with the serving hooks: `predict_a_batch` at the
host, `predict_feature` at every party. Factories for `heteronn serve --scheduler ...`.

Every party holds ids "0".."255" (its columns from tests.synthetic); `lacks` removes some
from a party, so tests can ask for ids one party does not hold."""

from __future__ import annotations

import torch

from tests import synthetic as syn

N_IDS = syn.N_ROWS + syn.N_TEST


class Holdings:
    """predict_feature over the synthetic columns: rows for the ids held here."""

    node: str
    x: torch.Tensor
    lacks: frozenset[str] = frozenset()

    def predict_feature(self, feature_model, ids):
        found = [i for i in ids if i.isdigit() and int(i) < N_IDS and i not in self.lacks]
        rows = torch.tensor([int(i) for i in found], dtype=torch.long)
        return found, feature_model(self.x[rows])


class ServingHost(Holdings, syn.SynthHost):
    def __init__(self, *args, lacks=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lacks = frozenset(lacks)

    def predict_a_batch(self, feature_projection):
        return self.infer_model(torch.cat([feature_projection[k] for k in self.keys], dim=1))


class ServingCollaborator(Holdings, syn.SynthCollaborator):
    def __init__(self, *args, lacks=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lacks = frozenset(lacks)


class NoHookCollaborator(syn.SynthCollaborator):
    """A collaborator whose author did not write predict_feature."""


def make_host(node="h", keys=("h", "c1"), rounds=2, lacks=()):
    return ServingHost(node, list(keys), 32, rounds, syn.Faults(""), lacks=lacks)


def make_collaborator(node="c1", lacks=()):
    return ServingCollaborator(node, 32, syn.Faults(""), lacks=lacks)


def make_no_hook_collaborator(node="c1"):
    return NoHookCollaborator(node, 32, syn.Faults(""))


def centralized(workdir, task: str, ids: list[str], keys=("h", "c1")) -> torch.Tensor:
    """The composed model's output for `ids`, from the state dicts each party saved, in one
    process with the Python classes: what serving must reproduce."""
    x = {k: syn.columns(k)[torch.tensor([int(i) for i in ids])] for k in keys}
    parts = []
    for k in keys:
        model = syn.feature_model(k)
        state = torch.load(workdir / k / task / "model" / "feature_model.pt", weights_only=True)
        model.load_state_dict(state)
        parts.append(model.eval()(x[k]))
    infer = syn.infer_model(len(keys))
    infer.load_state_dict(
        torch.load(workdir / keys[0] / task / "model" / "infer_model.pt", weights_only=True)
    )
    with torch.no_grad():
        return infer.eval()(torch.cat(parts, dim=1))
