"""Who can decrypt what, from the recorded wire bytes of 20 training steps (two parties, 6 -> 3).

The host decrypts only z = X·W (nothing else in any slot but flood noise) and never receives X,
V or W under its own key; the collaborator decrypts only ∂L/∂X and the masked weight gradient,
whose every group is mask-sized and whose sum hides Xᵀδ; everything else either receives is
under the other party's key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tenseal import sealapi

from party_node.secure import (
    KIND_BWD_GRAD,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD,
    KIND_SHARE,
)
from tests.secure_attacks import corr
from tests.secure_wire import make_parties, secure_backward, secure_forward

STEPS, ROWS, DIMS, LR = 20, 48, (6, 3), 0.05


class Recorded:
    """Fresh shares (the real initial exchange), 20 steps of random data and δ."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.p = make_parties({"c": DIMS}, LR, 0.9, None)
        self.x, self.z, self.delta, self.w, self.v, self.u = [], [], [], [], [], []
        host, coll = self.p.hosts["c"], self.p.colls["c"]
        for _ in range(STEPS):
            x = torch.randn(ROWS, DIMS[0], dtype=torch.float64)
            self.w.append(host.share.u + coll.share.v)
            self.u.append(host.share.u.copy())
            self.v.append(coll.share.v.copy())
            z = secure_forward(self.p, "c", x)
            d = torch.randn_like(z) * 1e-2
            secure_backward(self.p, "c", d)
            self.x.append(x.numpy())
            self.z.append(z.numpy())
            self.delta.append(d.numpy())

    def blobs(self, receiver: str, kind: str, prefix: str) -> list[bytes]:
        return [
            bytes(data)
            for pl in self.p.wire.received_by(receiver, kind)
            for name, data in pl.blobs.items()
            if name.startswith(prefix)
        ]


@pytest.fixture(scope="module")
def rec() -> Recorded:
    return Recorded()


def _decrypt_any(keys, data: bytes) -> np.ndarray:
    """Every slot `keys` gets out of a ciphertext, whatever its level or scale."""
    from party_node.secure import seal_io

    ct = seal_io.load_ciphertext(keys.engine.seal_context, data, "wire")
    pt = sealapi.Plaintext()
    keys._decryptor.decrypt(ct, pt)
    return np.asarray(keys.engine.encoder.decode_complex(pt))


def test_host_decrypts_z_and_nothing_else(rec: Recorded) -> None:
    host = rec.p.hosts["c"]
    plan, noise = host.geo.fwd, host.params.z_noise
    results = rec.blobs("host", KIND_FWD, "z/")
    assert len(results) == STEPS
    for data, z in zip(results, rec.z, strict=True):
        vec = host.own.decrypt(
            host.own.engine.load_ciphertext(data, "z", 1, host.share_result_scale)
        )
        np.testing.assert_allclose(plan.unpack(vec, ROWS, 0), z, atol=1e-12)
        rest = vec[~plan.output_slots()]
        # every other slot, real and imaginary, is flood noise: no partial sums, nothing of X
        assert (
            0.5 * noise < rest.real.std() < 2 * noise and 0.5 * noise < rest.imag.std() < 2 * noise
        )
    residual = np.concatenate(
        [
            host.own.decrypt(host.own.engine.load_ciphertext(d, "z", 1, host.share_result_scale))[
                : ROWS // 2 * DIMS[1]
            ].real
            for d in results
        ]
    )
    xs = np.concatenate([x[: ROWS // 2] for x in rec.x])
    z_true = np.concatenate([x[: ROWS // 2] @ w for x, w in zip(rec.x, rec.w, strict=True)])
    noise_part = residual.reshape(-1, DIMS[1]) - z_true
    assert np.abs(noise_part).max() < 10 * noise
    assert (
        max(corr(noise_part[:, j], xs[:, i]) for i in range(DIMS[0]) for j in range(DIMS[1])) < 0.2
    )


def test_host_never_receives_x_v_or_w_under_its_key(rec: Recorded) -> None:
    """Enc_C(Vᵀ) and Enc_C(X) are under the collaborator's key: the host's key decrypts noise
    of the ciphertext's size, uncorrelated with X or V."""
    hk = rec.p.host_keys
    for kind, prefix, truth in (
        (KIND_FWD, "v/", [v.T for v in rec.v]),
        (KIND_ENC_X, "x/", rec.x),
    ):
        blobs = rec.blobs("host", kind, prefix)
        assert blobs
        for data, secret in zip(blobs, truth, strict=False):
            vec = _decrypt_any(hk, data)
            assert np.abs(vec.real).mean() > 1e6
            flat = np.resize(secret.ravel(), vec.size)
            assert corr(vec.real, flat) < 0.1


def test_collaborator_decrypts_its_gradient_and_only_masked_weight_gradients(rec: Recorded) -> None:
    coll = rec.p.colls["c"]
    plan, p = coll.geo.gram, coll.params
    bound = p.partial_mask(plan.rows_per_group(ROWS))
    results = rec.blobs("c", KIND_BWD_WEIGHT, "y/")
    assert len(results) == STEPS * plan.result_cts()
    groups_seen, g_true, y_seen = [], [], []
    for step in range(STEPS):
        sums = {}
        for i, (tp, jp) in enumerate(
            (t, j) for t in range(plan.t_parts) for j in range(plan.j_parts)
        ):
            data = results[step * plan.result_cts() + i]
            vec = coll.own.decrypt(
                coll.own.engine.load_ciphertext(data, "y", 1, coll.gram_result_scale)
            )
            groups = vec[: plan.groups * plan.group].reshape(plan.groups, -1)
            groups_seen.append(groups)
            sums[(tp, jp)] = plan.group_sum(vec)
        y = plan.place(np.zeros(DIMS), sums)
        y_seen.append(y)
        g_true.append(rec.x[step].T @ rec.delta[step] * p.lam)
    # every group (one row's products) is hidden behind a mask of 2^mask_bits x its bound
    allg = np.concatenate(groups_seen)
    assert np.abs(allg.real).mean() > bound / 4 and np.abs(allg.imag).mean() > bound / 4
    # the sum over groups is λ(Xᵀδ + M): uncorrelated with Xᵀδ
    assert corr(np.array(y_seen), np.array(g_true)) < 0.2
    # ∂L/∂X is what it should be
    for data, d, w in zip(rec.blobs("c", KIND_BWD_GRAD, "dx/"), rec.delta, rec.w, strict=True):
        vec = coll.own.decrypt(
            coll.own.engine.load_ciphertext(data, "dx", 1, coll.share_result_scale)
        )
        got = coll.geo.bwd.unpack(vec, ROWS, 0) / p.lam
        np.testing.assert_allclose(got, d @ w.T, atol=1e-7)


def test_collaborator_never_receives_u_or_delta_under_its_key(rec: Recorded) -> None:
    ck = rec.p.coll_keys["c"]
    blobs = rec.blobs("c", KIND_SHARE, "u/") + rec.blobs("c", KIND_BWD_GRAD, "u/")
    copies = rec.p.colls["c"].geo.fwd.n1
    assert len(blobs) == (STEPS + 1) * copies
    for data, u in zip(blobs, np.repeat(rec.u, copies, axis=0), strict=False):
        vec = _decrypt_any(ck, data)
        assert np.abs(vec.real).mean() > 1e6
        assert corr(vec.real, np.resize(u.ravel(), vec.size)) < 0.1
