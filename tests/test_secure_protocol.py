"""The CKKS projection protocol: equivalence with plain training, privacy from wire bytes.

Tolerances (docs/secure-protocol.md): after every one of >= 20 SGD steps of secure and plain
training run side by side (each on its own trajectory), |z - z_plain| <= 1e-5,
|(U + V) - W_plain| <= 1e-6, |∂L/∂X - ∂L/∂X_plain| <= 1e-7. Measured maxima over repeated
runs: ~1.2e-6, ~2e-8 and ~8e-9.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import tenseal as ts
import torch
from torch import nn

from party_node.secure import (
    KIND_BWD_ENC,
    KIND_BWD_MASKED,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD_MASKED,
    KIND_FWD_SHARE,
    KIND_PUBLIC_KEYS,
    SecureProtocolError,
)
from party_node.secure.context import CONTEXT_BLOB
from tests.secure_wire import make_parties, secure_backward, secure_forward

Z_TOL, W_TOL, DX_TOL = 1e-5, 1e-6, 1e-7
STEPS = 20


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def _max_col_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |corr| between any column of a and any column of b (same rows)."""
    return max(_corr(a[:, i], b[:, j]) for i in range(a.shape[1]) for j in range(b.shape[1]))


class Run:
    """Secure and plain training side by side on the same data; records the secrets."""

    def __init__(self, dims: dict[str, tuple[int, int]], lr: float, momentum: float, rows: int):
        torch.manual_seed(0)
        self.dims, self.rows = dims, rows
        self.w0 = {k: np.random.default_rng(7).normal(0, 0.3, size=d) for k, d in dims.items()}
        self.parties = make_parties(dims, lr, momentum, self.w0)
        self.plain = {k: nn.Linear(d[0], d[1], bias=False).double() for k, d in dims.items()}
        for k, lin in self.plain.items():
            lin.weight.data = torch.from_numpy(self.w0[k].T.copy())
        self.host_proj = nn.Linear(3, 2, bias=False).double()  # host's own, plaintext projection
        total = 2 + sum(d[1] for d in dims.values())
        self.head_secure = nn.Linear(total, 1).double()
        self.head_plain = nn.Linear(total, 1).double()
        self.head_plain.load_state_dict(self.head_secure.state_dict())
        self.opt_plain = torch.optim.SGD(
            [
                *[p for lin in self.plain.values() for p in lin.parameters()],
                *self.head_plain.parameters(),
            ],
            lr=lr,
            momentum=momentum,
        )
        self.opt_head = torch.optim.SGD(self.head_secure.parameters(), lr=lr, momentum=momentum)
        self.record: dict[str, list] = {"x": [], "delta": [], "u": [], "xu": [], "g": []}

    def step(self) -> dict[str, float]:
        xs = {k: torch.randn(self.rows, d[0], dtype=torch.float64) for k, d in self.dims.items()}
        xh = torch.randn(self.rows, 3, dtype=torch.float64)
        y = torch.randn(self.rows, 1, dtype=torch.float64)
        hproj = self.host_proj(xh).detach()
        # plain reference
        xp = {k: x.clone().requires_grad_(True) for k, x in xs.items()}
        zp = {k: self.plain[k](xp[k]) for k in xs}
        loss = ((self.head_plain(torch.cat([hproj, *zp.values()], 1)) - y) ** 2).mean()
        self.opt_plain.zero_grad()
        loss.backward()
        # secure
        zs = {k: secure_forward(self.parties, k, x).requires_grad_(True) for k, x in xs.items()}
        loss_s = ((self.head_secure(torch.cat([hproj, *zs.values()], 1)) - y) ** 2).mean()
        self.opt_head.zero_grad()
        loss_s.backward()
        errs = {"z": 0.0, "w": 0.0, "dx": 0.0}
        for k, x in xs.items():
            host = self.parties.hosts[k]
            self.record["x"].append((k, x.numpy()))
            self.record["delta"].append((k, zs[k].grad.numpy().copy()))
            self.record["u"].append((k, host.share.u.copy()))
            self.record["xu"].append((k, x.numpy() @ host.share.u))
            self.record["g"].append((k, x.numpy().T @ zs[k].grad.numpy()))
            dx = secure_backward(self.parties, k, zs[k].grad)
            errs["z"] = max(errs["z"], float((zs[k].detach() - zp[k].detach()).abs().max()))
            errs["dx"] = max(errs["dx"], float((dx - xp[k].grad).abs().max()))
        self.opt_head.step()
        self.opt_plain.step()
        for k in xs:
            w = self.parties.hosts[k].share.u + self.parties.colls[k].share.v
            errs["w"] = max(errs["w"], float(np.abs(w - self.plain[k].weight.data.numpy().T).max()))
        return errs


@pytest.fixture(scope="module")
def two_party_run() -> Run:
    """Two parties, non-square 6 -> 3, momentum 0.9, 20 steps (shared by the privacy tests)."""
    run = Run({"bank": (6, 3)}, lr=0.02, momentum=0.9, rows=48)
    run.errors = [run.step() for _ in range(STEPS)]
    return run


def test_two_party_nonsquare_momentum_matches_plain(two_party_run: Run) -> None:
    for i, e in enumerate(two_party_run.errors):
        assert e["z"] <= Z_TOL and e["w"] <= W_TOL and e["dx"] <= DX_TOL, (i, e)


def test_three_parties_square_and_nonsquare_plain_sgd_match() -> None:
    run = Run({"bank": (4, 4), "shop": (5, 7)}, lr=0.1, momentum=0.0, rows=32)
    for i in range(STEPS):
        e = run.step()
        assert e["z"] <= Z_TOL and e["w"] <= W_TOL and e["dx"] <= DX_TOL, (i, e)


def test_tiled_batch_and_width_match_plain() -> None:
    """More rows than a block (2 row tiles) and more columns than a ciphertext holds."""
    run = Run({"wide": (30, 5)}, lr=0.05, momentum=0.9, rows=150)
    for _ in range(2):
        e = run.step()
        assert e["z"] <= Z_TOL and e["w"] <= W_TOL and e["dx"] <= DX_TOL, e


def test_batched_test_forward_needs_no_backward(two_party_run: Run) -> None:
    p, k = two_party_run.parties, "bank"
    x = torch.randn(300, 6, dtype=torch.float64)
    z = secure_forward(p, k, x, train=False)
    w = p.hosts[k].share.u + p.colls[k].share.v
    assert torch.allclose(z, x @ torch.from_numpy(w), atol=Z_TOL)
    with pytest.raises(SecureProtocolError):
        p.hosts[k].backward(torch.zeros(300, 3, dtype=torch.float64))


# ---- privacy, from the recorded bytes -------------------------------------------------------


def _decrypt_all(keys, payloads, prefix, levels=1):
    """Every slot (real and imaginary) the receiver can decrypt from these payloads."""
    from tenseal import sealapi

    out = []
    for pl in payloads:
        for name, data in pl.blobs.items():
            if name.startswith(prefix):
                ct = keys.engine.load_ciphertext(bytes(data), name, levels)
                pt = sealapi.Plaintext()
                keys._decryptor.decrypt(ct, pt)
                out.append(np.asarray(keys.engine.encoder.decode_complex(pt)))
    return out


def test_host_learns_nothing_correlated_with_x(two_party_run: Run) -> None:
    run, p = two_party_run, two_party_run.parties
    xs = np.concatenate([x for _, x in run.record["x"]])
    readable = np.concatenate(
        [
            pl_t
            for pl_t in (
                np.frombuffer(pl.tensors["z_masked"].data, "<f8").reshape(-1, 3)
                for pl in p.wire.received_by("host", KIND_FWD_SHARE)[:STEPS]
            )
        ]
    )
    assert _max_col_corr(xs, readable) < 0.2
    # detector sanity: the unmasked projection does correlate with X
    z = xs @ run.w0["bank"]
    assert _max_col_corr(xs, z) > 0.3
    # what the host decrypts (δ·Vᵀ + N) is mask-sized in every slot and uncorrelated with X
    dec = _decrypt_all(p.host_keys, p.wire.received_by("host", KIND_BWD_MASKED), "grad_x/")
    bound = p.hosts["bank"].params.mask_bound
    for vec in dec:
        assert np.abs(vec.real).mean() > bound / 4 and np.abs(vec.imag).mean() > bound / 4
    assert _max_col_corr(xs, np.concatenate([geo_unpack(p, v.real, 6) for v in dec])) < 0.2
    # X's ciphertexts are under the collaborator's key: the host's key decrypts garbage,
    # and the raw bytes read as numbers do not correlate with X either
    enc_x = p.wire.received_by("host", KIND_ENC_X)[:STEPS]
    wrong = _decrypt_all(p.host_keys, enc_x, "enc_x/", levels=0)
    x_steps = [x for _, x in run.record["x"]]
    for vec, x in zip(wrong, x_steps, strict=True):
        assert _max_col_corr(x, geo_unpack(p, vec.real, 6)) < 0.6
        assert np.abs(vec.real).mean() > 1e6
    raw = np.frombuffer(enc_x[0].blobs["enc_x/0/0"][: 48 * 6 * 8], "<u4").astype(float)
    assert _corr(raw.reshape(-1)[: 48 * 6], x_steps[0].reshape(-1)) < 0.3


def geo_unpack(p, vec: np.ndarray, cols: int) -> np.ndarray:
    geo = p.hosts["bank"].geo
    return geo.unpack({(0, 0): vec}, 48, cols)


def test_collaborator_learns_nothing_correlated_with_delta_or_u(two_party_run: Run) -> None:
    run, p = two_party_run, two_party_run.parties
    ck = p.coll_keys["bank"]
    geo = p.colls["bank"].geo
    fwd = _decrypt_all(ck, p.wire.received_by("bank", KIND_FWD_MASKED)[:STEPS], "fwd/")
    grads = _decrypt_all(ck, p.wire.received_by("bank", KIND_BWD_WEIGHT), "grad_w/")
    assert len(fwd) == STEPS and len(grads) == STEPS
    # every decrypted slot, rotation leftovers, padding and imaginary parts included, is masked
    for vec in fwd:
        assert np.abs(vec.real).min() > 1.0 and np.abs(vec.imag).mean() > 2.0**28
    for vec in grads:
        assert np.abs(vec.imag).mean() > 50 and np.abs(vec.real).mean() > 50
    # decrypted forward values vs the true X·U at the same slots, and vs U itself
    xu = np.stack([v for _, v in run.record["xu"]])  # (steps, rows, 3)
    dec_xu = np.stack([geo.unpack({(0, 0): v.real}, 48, 3) for v in fwd])
    assert _corr(dec_xu, xu) < 0.1
    u = np.stack([v for _, v in run.record["u"]])
    assert _corr(dec_xu[:, :6, :].reshape(STEPS, -1), u.reshape(STEPS, -1)[:, :18]) < 0.2
    # decrypted weight gradient vs the true Xᵀδ, and vs δ
    g = np.stack([v for _, v in run.record["g"]])
    dec_g = np.stack(
        [[v.real[t * geo.stride : t * geo.stride + 3] for t in range(6)] for v in grads]
    )
    assert _corr(dec_g, g) < 0.2
    delta = np.stack([d for _, d in run.record["delta"]])
    assert _corr(dec_g.reshape(STEPS, -1), delta.reshape(STEPS, -1)[:, :18]) < 0.2
    # Enc_H(δ) is under the host's key: the collaborator's key decrypts garbage
    wrong = _decrypt_all(ck, p.wire.received_by("bank", KIND_BWD_ENC), "enc_delta/", levels=0)
    assert len(wrong) == STEPS
    for vec, d in zip(wrong, delta, strict=True):
        assert np.abs(vec.real).mean() > 1e6
        assert _max_col_corr(d, geo.unpack({(0, 0): vec.real}, 48, 3)) < 0.6


def test_public_contexts_carry_no_secret_key(two_party_run: Run) -> None:
    p = two_party_run.parties
    key_msgs = [s for s in p.wire.log if s.kind == KIND_PUBLIC_KEYS]
    assert len(key_msgs) == 2
    from heteronn.v1 import common_pb2

    for sent in key_msgs:
        blob = common_pb2.Payload.FromString(sent.data).blobs[CONTEXT_BLOB]
        ctx = ts.context_from(bytes(blob))
        assert not ctx.is_private() and not ctx.has_secret_key()
        vec = ts.ckks_vector(ctx, [1.0, 2.0])
        with pytest.raises(ValueError):
            vec.decrypt()
    with pytest.raises(TypeError):
        pickle.dumps(p.host_keys)
    assert "secret" not in repr(p.host_keys).lower()


def test_no_secret_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run = Run({"bank": (3, 2)}, lr=0.05, momentum=0.9, rows=8)
    run.step()
    secret = run.parties.host_keys._ctx.serialize(save_secret_key=True)
    public = run.parties.host_keys.public_blobs()[CONTEXT_BLOB]
    assert len(secret) > len(public)  # the secret key exists, and only here
    text = caplog.text + repr(run.parties.host_keys) + repr(run.parties.coll_keys["bank"])
    for key in [run.parties.host_keys, *run.parties.coll_keys.values()]:
        sk = key._ctx.serialize(
            save_secret_key=True,
            save_public_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        assert sk.hex()[-64:] not in text and repr(sk[-32:]) not in text
