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


class NoHookHost(syn.SynthHost):
    """A host whose author wrote predict_a_batch but not predict_feature."""

    predict_a_batch = ServingHost.predict_a_batch


def make_host(node="h", keys=("h", "c1"), rounds=2, lacks=()):
    return ServingHost(node, list(keys), 32, rounds, syn.Faults(""), lacks=lacks)


def make_collaborator(node="c1", lacks=()):
    return ServingCollaborator(node, 32, syn.Faults(""), lacks=lacks)


def make_no_hook_collaborator(node="c1"):
    return NoHookCollaborator(node, 32, syn.Faults(""))


def make_no_hook_host(node="h", keys=("h", "c1")):
    return NoHookHost(node, list(keys), 32, 2, syn.Faults(""))


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


# ---- secure mode --------------------------------------------------------------------------

from tests import secure_synthetic as sec  # noqa: E402


class SecureServingHost(Holdings, sec.SecureSynthHost):
    def __init__(self, *args, lacks=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lacks = frozenset(lacks)

    def predict_a_batch(self, feature_projection):
        return self.infer_model(torch.cat([feature_projection[k] for k in self.keys], dim=1))


class SecureServingCollaborator(Holdings, sec.SecureSynthCollaborator):
    def __init__(self, *args, lacks=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lacks = frozenset(lacks)


def make_secure_host(node="h", keys=("h", "c1"), rounds=2, lacks=()):
    config = [(k, syn.OUT, sec.PROJ) for k in keys]
    return SecureServingHost(
        node, list(keys), 32, rounds, syn.Faults(""), lacks=lacks,
        project_layer_config=config, project_layer_lr=sec.PROJECT_LR, schedule_timeout=60,
    )


def make_secure_collaborator(node="c1", lacks=()):
    return SecureServingCollaborator(
        node, 32, syn.Faults(""), lacks=lacks, project_layer_lr=sec.PROJECT_LR,
        schedule_timeout=60,
    )


def centralized_secure(workdir, task: str, ids: list[str], keys=("h", "c1")) -> torch.Tensor:
    """The secure model's output for `ids` in the clear: feature models, the host's own
    projection, each collaborator's W = U + V from the two parties' shares, the inference
    model; what secure serving must reproduce within CKKS precision."""
    rows = torch.tensor([int(i) for i in ids])
    host_dir = workdir / keys[0] / task / "model"
    shares_u = torch.load(host_dir / "projection_shares.pt", weights_only=True)
    parts = []
    for k in keys:
        model = syn.feature_model(k)
        model.load_state_dict(
            torch.load(workdir / k / task / "model" / "feature_model.pt", weights_only=True)
        )
        with torch.no_grad():
            x = model.eval()(syn.columns(k)[rows]).double()
        if k == keys[0]:
            w = torch.load(host_dir / "host_projection.pt", weights_only=True)["weight"].double().T
        else:
            v = torch.load(workdir / k / task / "model" / "projection_share.pt",
                           weights_only=True)["v"]
            w = shares_u[k].double() + v.double()
        parts.append(x @ w)
    infer = sec.SecureSynthHost.build_infer_model(make_secure_host(keys=keys))
    infer.load_state_dict(torch.load(host_dir / "infer_model.pt", weights_only=True))
    with torch.no_grad():
        return infer.eval()(torch.cat(parts, dim=1).float())
