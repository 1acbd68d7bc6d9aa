"""Validation of a secure task before the first batch, and refusal of bad protocol messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from party_node.errors import ConfigError
from party_node.hetero_nn import SecureHeteroNNCollaboratorScheduler, SecureHeteroNNHostScheduler
from party_node.secure import (
    CkksParams,
    PeerKeys,
    SecureConfigError,
    SecureParams,
    SecureProtocolError,
    agreement_value,
    check_agreement,
    check_feature_width,
    validate_project_layer_config,
    validate_project_layer_lr,
)
from party_node.secure.context import CONTEXT_BLOB, GALOIS_BLOB
from tests.secure_wire import make_parties

KEYS = ["demo_host", "demo_collaborator"]


def test_config_must_name_exactly_the_task_feature_keys() -> None:
    ok = validate_project_layer_config([("demo_host", 20, 10), ("demo_collaborator", 20, 10)], KEYS)
    assert ok == {"demo_host": (20, 10), "demo_collaborator": (20, 10)}
    with pytest.raises(SecureConfigError, match=r"no entry for \['demo_collaborator'\]"):
        validate_project_layer_config([("demo_host", 20, 10)], KEYS)
    with pytest.raises(SecureConfigError, match=r"'bank'.*which no party"):
        validate_project_layer_config(
            [("demo_host", 20, 10), ("demo_collaborator", 20, 10), ("bank", 4, 4)], KEYS
        )
    with pytest.raises(SecureConfigError, match="twice"):
        validate_project_layer_config([("demo_host", 2, 1), ("demo_host", 2, 1)], ["demo_host"])
    with pytest.raises(SecureConfigError, match="out_dim must be a positive int"):
        validate_project_layer_config([("demo_host", 2, 0)], ["demo_host"])
    with pytest.raises(SecureConfigError, match=r"\(feature_key, in_dim, out_dim\)"):
        validate_project_layer_config([("demo_host", 2)], ["demo_host"])


def test_in_dim_must_equal_feature_width_seed_example() -> None:
    """The seed declares ('demo_collaborator', 10, 10) for a 20-wide HalfConvNet."""
    check_feature_width("demo_collaborator", 20, 10, 20)
    with pytest.raises(SecureConfigError) as err:
        check_feature_width("demo_collaborator", 10, 10, 20)
    assert str(err.value) == (
        "project_layer_config declares in_dim=10 for 'demo_collaborator' but its feature model "
        "outputs 20 columns; set ('demo_collaborator', 20, 10)"
    )


@pytest.mark.parametrize("bad", [0, -0.1, math.nan, math.inf, "0.1", None, True])
def test_project_layer_lr_must_be_positive_and_finite(bad: object) -> None:
    with pytest.raises(SecureConfigError, match="project_layer_lr"):
        validate_project_layer_lr(bad)


def test_project_layer_lr_must_agree_at_every_party() -> None:
    assert validate_project_layer_lr(1) == 1.0
    a, b = agreement_value(0.01, 0.9), agreement_value(0.02, 0.9)
    check_agreement({"host": a, "bank": a})
    with pytest.raises(SecureConfigError, match="project_layer_lr must be equal") as err:
        check_agreement({"host": a, "bank": b})
    assert "lr=0.02" in str(err.value) and "bank" in str(err.value)


def test_ckks_params_refuse_insecure_moduli() -> None:
    with pytest.raises(ValueError, match="128-bit"):
        CkksParams(coeff_mod_bit_sizes=(60, 60, 60, 60))


@pytest.fixture(scope="module")
def parties():
    return make_parties({"bank": (3, 2)}, 0.05, 0.9, {"bank": np.zeros((3, 2))})


def test_non_finite_and_out_of_range_are_protocol_errors(parties) -> None:
    host, coll = parties.hosts["bank"], parties.colls["bank"]
    with pytest.raises(SecureProtocolError, match="NaN or infinite"):
        coll.forward(torch.tensor([[1.0, math.nan, 0.0]]))
    with pytest.raises(SecureProtocolError) as err:
        coll.forward(torch.full((2, 3), 100.0))
    assert str(err.value) == (
        "'bank' feature tensor: value 100 exceeds the agreed bound 64; raise "
        "project_layer_feature_bound at every party"
    )
    with pytest.raises(SecureProtocolError, match="expected \\(rows, 3\\)"):
        coll.forward(torch.zeros(2, 4))
    host.forward(coll.forward(torch.ones(4, 3)))
    with pytest.raises(SecureProtocolError, match="project_layer_delta_bound"):
        host.backward(torch.full((4, 2), 0.5))
    with pytest.raises(SecureProtocolError, match="shape"):
        host.backward(torch.zeros(3, 2))


def test_tampered_or_misordered_messages_are_refused() -> None:
    own = make_parties({"bank": (3, 2)}, 0.05, 0.9, {"bank": np.zeros((3, 2))})
    host, coll = own.hosts["bank"], own.colls["bank"]
    msg = coll.forward(torch.ones(4, 3))
    bad = dict(msg)
    bad["z/0"] = msg["z/0"][:1000]
    with pytest.raises(SecureProtocolError, match="not a valid SEAL object"):
        host.forward(bad)
    with pytest.raises(SecureProtocolError, match="missing"):
        host.forward({"rows": msg["rows"]})
    extra = dict(msg, **{"z/1": msg["z/0"]})
    with pytest.raises(SecureProtocolError, match="unexpected"):
        host.forward(extra)
    # a fresh (level-2) ciphertext where a finished result belongs: wrong level
    swapped = dict(msg, **{"z/0": msg["v/0/0"]})
    with pytest.raises(SecureProtocolError, match="unexpected level"):
        host.forward(swapped)
    fresh = make_parties({"bank": (3, 2)}, 0.05, 0.9, {"bank": np.zeros((3, 2))})
    with pytest.raises(SecureProtocolError, match="out of order"):
        fresh.colls["bank"].finish_backward({})
    with pytest.raises(SecureProtocolError, match="without a pending"):
        fresh.hosts["bank"].backward(torch.zeros(4, 2))
    with pytest.raises(SecureProtocolError, match="weight_gradient before backward"):
        fresh.hosts["bank"].weight_gradient({})


def test_result_at_a_scale_of_the_senders_choosing_is_refused() -> None:
    """The owner decodes with the scale it expects, never one the sender wrote."""
    from tests.secure_attacks import crafted_ciphertext

    own = make_parties({"bank": (3, 2)}, 0.05, 0.9, {"bank": np.zeros((3, 2))})
    host, coll = own.hosts["bank"], own.colls["bank"]
    msg = coll.forward(torch.ones(4, 3))
    like = host.own.engine.load_ciphertext(msg["z/0"], "z", 1, host.share_result_scale)
    msg["z/0"] = crafted_ciphertext(host.own.engine, like, 2**40, 2.0**20)
    with pytest.raises(SecureProtocolError, match="unexpected scale"):
        host.forward(msg)


def test_peer_context_with_secret_key_is_refused(parties) -> None:
    own = parties.host_keys
    secret_ctx = own._ctx.serialize(save_secret_key=True)
    with pytest.raises(SecureProtocolError, match="secret key"):
        PeerKeys(CkksParams(), {CONTEXT_BLOB: secret_ctx, GALOIS_BLOB: b""})
    with pytest.raises(SecureProtocolError, match="parameters differ"):
        PeerKeys(
            CkksParams(poly_modulus_degree=16384, coeff_mod_bit_sizes=(60, 60, 60)),
            own.public_blobs(),
        )


def test_checkpoint_round_trip_restores_shares(parties) -> None:
    host, coll = parties.hosts["bank"], parties.colls["bank"]
    hs, cs = host.state_dict(), coll.state_dict()
    assert set(hs) == {"u", "buf", "u0", "slow"} and set(cs) == {"v", "buf"}
    u = host.share.u.copy()
    host.share.u += 1.0
    host.load_state_dict(hs)
    coll.load_state_dict(cs)
    assert np.array_equal(host.share.u, u)
    assert SecureParams().agreement(0.1, 0.9) == agreement_value(0.1, 0.9)


class _Host(SecureHeteroNNHostScheduler):
    def load_local_ids(self): ...
    def split_dataset(self, id_intersection): ...
    def build_feature_model(self): ...
    def build_feature_optimizer(self, feature_model): ...
    def build_infer_model(self): ...
    def build_infer_optimizer(self, infer_model): ...
    def iterate_train_feature(self, feature_model, train_ids): ...
    def iterate_test_feature(self, feature_model, test_ids): ...
    def train_a_batch(self, feature_projection, labels): ...
    def run_test(self, batched_feature_projection, batched_labels): ...


class _Collaborator(SecureHeteroNNCollaboratorScheduler):
    def load_local_ids(self): ...
    def split_dataset(self, id_intersection): ...
    def build_feature_model(self): ...
    def build_feature_optimizer(self, feature_model): ...
    def iterate_train_feature(self, feature_model, train_ids): ...
    def iterate_test_feature(self, feature_model, test_ids): ...


def test_secure_schedulers_check_their_arguments() -> None:
    config = [("demo_host", 20, 10), ("demo_collaborator", 20, 10)]
    host = _Host("demo_host", project_layer_config=config, project_layer_lr=0.01, max_rounds=1)
    assert host._secure and host.project_layer_momentum == 0.9
    assert _Collaborator("demo_collaborator", project_layer_lr=1)._secure
    with pytest.raises(ConfigError, match="project_layer_lr"):
        _Host("demo_host", project_layer_config=config, project_layer_lr=0)
    with pytest.raises(ConfigError, match="project_layer_lr"):
        _Collaborator("demo_collaborator", project_layer_lr=-1.0)
    with pytest.raises(ConfigError, match="own feature_key 'bank'"):
        _Host("bank", project_layer_config=config, project_layer_lr=0.01)
    with pytest.raises(ConfigError, match="in_dim must be a positive int"):
        _Host("demo_host", project_layer_config=[("demo_host", "20", 10)], project_layer_lr=0.1)
    with pytest.raises(ConfigError, match="momentum"):
        _Collaborator("demo_collaborator", project_layer_lr=0.1, project_layer_momentum=1.0)
    with pytest.raises(ConfigError, match="project_layer_feature_bound must be a finite number"):
        _Host(
            "demo_host",
            project_layer_config=config,
            project_layer_lr=0.1,
            project_layer_feature_bound=0,
        )
    with pytest.raises(ConfigError, match="too large for the weight-gradient masks"):
        _Collaborator("demo_collaborator", project_layer_lr=0.1, project_layer_feature_bound=1e9)
    with pytest.raises(ConfigError, match="project_layer_shape for 'demo_collaborator'"):
        _Collaborator("demo_collaborator", project_layer_lr=0.1, project_layer_shape=(20,))
    declared = _Collaborator(
        "demo_collaborator", project_layer_lr=0.1, project_layer_shape=[20, 10]
    )
    assert declared.project_layer_shape == (20, 10)
    assert not declared.project_layer_allow_full_width
