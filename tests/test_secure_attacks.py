"""The outside audit's attacks, run against the real protocol classes.

1. Secret-key recovery: a party replaces a ciphertext it sends to the key's owner by the
   crafted (0, t) (plus a fresh encryption of noise, so it looks normal) and reads the key
   back from whatever the owner sends next. In the first protocol the owner returned the
   decryption itself (correlation ~1.0 with the key: 0.99999 host, 0.97 collaborator); now
   nothing the owner sends is read by the attacker as a function of its decryption.
2. Averaging: the collaborator averages its share over a task to estimate W (midrange of the
   first protocol's share estimated W with correlation 0.79 over 800 steps).
3. (The host alone choosing out_dim >= in_dim: test_secure_task.py, end to end.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tenseal import sealapi

from party_node.secure import SecureConfigError, check_reduces_width
from party_node.secure.shares import init_bound
from tests.secure_attacks import corr, crafted_ciphertext, slot_corr
from tests.secure_wire import make_parties

ROWS, DIMS = 48, (6, 3)
MAX_KEY_CORR, MAX_W_CORR = 0.05, 0.1


def _noise_under(peer_keys, like, scale: float) -> object:
    """A fresh public-key encryption of small noise: what a careful attacker adds."""
    pt = peer_keys.engine.encode(
        np.random.default_rng(0).normal(0, 1e-3, 4096), scale, like.parms_id()
    )
    ct = sealapi.Ciphertext()
    sealapi.Encryptor(peer_keys.engine.seal_context, peer_keys.context.public_key().data).encrypt(
        pt, ct
    )
    return ct


def _disguised(engine, peer_keys, like, t: int, scale: float) -> bytes:
    """(0, t) + Enc(noise), serialized: looks like any other result ciphertext."""
    from party_node.secure import seal_io

    crafted = engine.load_ciphertext(crafted_ciphertext(engine, like, t, scale), "c", 1, scale)
    engine.evaluator.add_inplace(crafted, _noise_under(peer_keys, like, scale))
    return seal_io.save_bytes(crafted)


def _head_delta(z: torch.Tensor, seed: int) -> torch.Tensor:
    """δ of a host model (MSE through a linear head): a function of the z it decrypted."""
    g = torch.Generator().manual_seed(seed)
    head = 0.1 * torch.randn(z.shape[1], 1, generator=g, dtype=torch.float64)
    y = torch.randn(z.shape[0], 1, generator=g, dtype=torch.float64)
    z = z.detach().clone().requires_grad_(True)
    (((z @ head) - y) ** 2).mean().backward()
    return z.grad


def test_collaborator_cannot_read_the_host_key_from_a_crafted_forward() -> None:
    """C sends (0, t) instead of Enc_H(X·W). The host decrypts t·s_H(ζ)/Δ as z (it passes the
    range checks), trains on it, and everything C gets back is read slot by slot against the
    key: nothing correlates (the first protocol returned the decryption: 0.99999)."""
    p = make_parties({"c": DIMS}, 0.05, 0.9, None)
    host, coll = p.hosts["c"], p.colls["c"]
    x = torch.randn(ROWS, DIMS[0], dtype=torch.float64)
    fwd = coll.forward(x)
    scale = host.share_result_scale
    like = host.own.engine.load_ciphertext(fwd["z/0"], "z", 1, scale)
    fwd["z/0"] = _disguised(host.own.engine, coll.host, like, 2**36, scale)
    key = host.own.decrypt(host.own.engine.load_ciphertext(fwd["z/0"], "z", 1, scale))
    z = host.forward(fwd)  # the host cannot tell
    assert float(z.abs().max()) < host.params.output_limit
    enc_x = coll.encrypt_features()
    grad = host.backward(_head_delta(z, 1))
    weight = host.weight_gradient(enc_x)
    readback = [
        coll.own.decrypt(coll.own.engine.load_ciphertext(m[n], n, 1, s))
        for m, names, s in (
            (grad, [n for n in grad if n.startswith("dx/")], coll.share_result_scale),
            (weight, [n for n in weight if n.startswith("y/")], coll.gram_result_scale),
        )
        for n in names
    ]
    assert readback and max(slot_corr(r, key) for r in readback) <= MAX_KEY_CORR


def test_host_cannot_read_the_collaborator_key_from_crafted_backward_messages() -> None:
    """H sends (0, t) instead of Enc_C(λδ·Wᵀ) and Enc_C(λ(Xᵀδ + M)). The collaborator decrypts
    them, backpropagates and steps its share; all the host reads afterwards (the next z, which
    the collaborator computes with the stepped share) is uncorrelated with the key (the first
    protocol returned the decryption plus X·V: 0.97)."""
    p = make_parties({"c": DIMS}, 0.05, 0.9, None)
    host, coll = p.hosts["c"], p.colls["c"]
    x = torch.randn(ROWS, DIMS[0], dtype=torch.float64)
    z = host.forward(coll.forward(x))
    enc_x = coll.encrypt_features()
    grad = host.backward(_head_delta(z, 2))
    weight = host.weight_gradient(enc_x)
    keys = []
    for msg, prefix, scale, t in (
        (grad, "dx/", coll.share_result_scale, 2**34),
        (weight, "y/", coll.gram_result_scale, 2**45),
    ):
        for name in [n for n in msg if n.startswith(prefix)]:
            like = coll.own.engine.load_ciphertext(msg[name], name, 1, scale)
            msg[name] = _disguised(coll.own.engine, host.peer, like, t, scale)
            keys.append(
                coll.own.decrypt(coll.own.engine.load_ciphertext(msg[name], name, 1, scale))
            )
    coll.finish_backward(grad)
    coll.apply_weight_gradient(weight)
    nxt = coll.forward(torch.randn(ROWS, DIMS[0], dtype=torch.float64))
    readback = host.own.decrypt(
        host.own.engine.load_ciphertext(nxt["z/0"], "z", 1, host.share_result_scale)
    )
    assert max(slot_corr(readback, k) for k in keys) <= MAX_KEY_CORR


def _train_shares(steps: int, dims: tuple[int, int], lr: float, momentum: float, seed: int):
    """The real initial exchange (W0 = a ⊙ b, large collaborator offset), then the real share
    updates of `steps` SGD steps whose gradients pull W towards a target far from W0, so W
    drifts as it does in training. Returns the collaborator's shares and the true W's."""
    p = make_parties({"c": dims}, lr, momentum, None)
    host, coll = p.hosts["c"].share, p.colls["c"].share
    rng = np.random.default_rng(seed)
    target = rng.normal(0, 2 * init_bound(dims[0]), dims)
    views, ws = [coll.v.copy()], [host.u + coll.v]
    for _ in range(steps):
        w = host.u + coll.v
        grad = 0.05 * (w - target) + rng.normal(0, 0.02, dims)
        coll.step(grad + host.next_mask())
        views.append(coll.v.copy())
        ws.append(host.u + coll.v)
    return np.array(views), np.array(ws)


def test_collaborator_view_over_a_task_does_not_estimate_w() -> None:
    """800 steps (the audit's window) on a 128 x 32 projection: the mean and the midrange of the
    collaborator's share, and its share's drift, are all uncorrelated with W (|corr| <= 0.1)."""
    views, ws = _train_shares(800, (128, 32), lr=0.01, momentum=0.9, seed=3)
    w_final, drift = ws[-1], ws[-1] - ws[0]
    assert corr(drift, w_final) > 0.5  # W moved: an estimate of the drift would estimate W
    estimates = {
        "mean": views.mean(0),
        "midrange": (views.max(0) + views.min(0)) / 2,
        "mean minus start": views.mean(0) - views[0],
        "end minus start": views[-1] - views[0],
    }
    for name, est in estimates.items():
        assert corr(est, w_final) <= MAX_W_CORR, name
        assert corr(est, ws.mean(0)) <= MAX_W_CORR, name


def test_projection_that_keeps_the_width_is_refused_unless_allowed() -> None:
    with pytest.raises(SecureConfigError, match="project_layer_allow_full_width=True"):
        check_reduces_width("bank", 6, 6, allow=False)
    with pytest.raises(SecureConfigError, match="from 6 to 9 columns"):
        check_reduces_width("bank", 6, 9, allow=False)
    check_reduces_width("bank", 6, 6, allow=True)
    check_reduces_width("bank", 6, 5, allow=False)
