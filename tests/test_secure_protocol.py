"""The CKKS projection protocol: numerical equivalence with plain training.

Tolerances (docs/secure-protocol.md): after every one of >= 20 SGD steps of secure and plain
training run side by side (each on its own trajectory), |z - z_plain| <= 1e-5,
|(U + V) - W_plain| <= 1e-6, |∂L/∂X - ∂L/∂X_plain| <= 1e-7. What each party sees on the wire
is checked in test_secure_wire_privacy.py, the audit's attacks in test_secure_attacks.py.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import tenseal as ts
import torch
from torch import nn

from party_node.secure import KIND_PUBLIC_KEYS, SecureProtocolError
from party_node.secure.context import CONTEXT_BLOB
from tests.secure_wire import make_parties, secure_backward, secure_forward

Z_TOL, W_TOL, DX_TOL = 1e-5, 1e-6, 1e-7
STEPS = 20


class Run:
    """Secure and plain training side by side on the same data; records the secrets."""

    def __init__(
        self,
        dims: dict[str, tuple[int, int]],
        lr: float,
        momentum: float,
        rows: int,
        defer_weight: bool = False,
    ):
        torch.manual_seed(0)
        self.defer_weight = defer_weight
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
        self.record: dict[str, list] = {k: [] for k in ("x", "delta", "u", "v", "w", "g")}

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
            coll = self.parties.colls[k]
            self.record["x"].append((k, x.numpy()))
            self.record["delta"].append((k, zs[k].grad.numpy().copy()))
            self.record["u"].append((k, host.share.u.copy()))
            self.record["v"].append((k, coll.share.v.copy()))
            self.record["w"].append((k, host.share.u + coll.share.v))
            self.record["g"].append((k, x.numpy().T @ zs[k].grad.numpy()))
            dx = secure_backward(self.parties, k, zs[k].grad, self.defer_weight)
            errs["z"] = max(errs["z"], float((zs[k].detach() - zp[k].detach()).abs().max()))
            errs["dx"] = max(errs["dx"], float((dx - xp[k].grad).abs().max()))
        self.opt_head.step()
        self.opt_plain.step()
        for k in xs:
            if k in self.parties.pending:  # V steps inside the next forward; z checks it
                continue
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


def test_next_product_starts_before_the_weight_step_and_still_matches_plain() -> None:
    """As in a task: each batch's X·Enc_H(U) is computed before the previous batch's weight
    gradient steps V (U's next share came early, with ∂L/∂X); X·V is added after the step."""
    run = Run({"bank": (6, 3)}, lr=0.05, momentum=0.9, rows=48, defer_weight=True)
    for i in range(8):
        e = run.step()
        assert e["z"] <= Z_TOL and e["dx"] <= DX_TOL, (i, e)
    p, coll = run.parties, run.parties.colls["bank"]
    coll.start_forward(torch.randn(48, 6, dtype=torch.float64))
    with pytest.raises(SecureProtocolError, match="weight gradient of the previous batch"):
        coll.finish_forward()
    weight = p.pending.pop("bank")
    coll.apply_weight_gradient(weight)
    with pytest.raises(SecureProtocolError, match="no weight gradient is due"):
        coll.apply_weight_gradient(weight)
    w = p.hosts["bank"].share.u + coll.share.v
    assert np.abs(w - run.plain["bank"].weight.data.numpy().T).max() <= W_TOL


def test_partial_products_beyond_the_encoders_range_still_give_z() -> None:
    """X·V alone can exceed what one plaintext at the product's scale holds (|X| near its
    bound, large share offsets) although z = X·W is small: it is added in parts, mod q."""
    w0 = np.random.default_rng(3).normal(0, 0.2, size=(20, 2))
    p = make_parties({"c": (20, 2)}, 0.01, 0.9, {"c": w0}, share_sd=1000.0)
    v = p.colls["c"].share.v
    x = torch.from_numpy(60.0 * np.sign(v[:, 0])).repeat(128, 1)  # |X·V| ≈ 60·Σ|V| ~ 10^6
    assert np.abs(x.numpy() @ v).max() > 8 * p.colls["c"].params.output_limit
    z = secure_forward(p, "c", x, train=False)
    assert torch.allclose(z, x @ torch.from_numpy(w0), atol=Z_TOL)


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


def test_public_contexts_carry_no_secret_key(two_party_run: Run) -> None:
    p = two_party_run.parties
    key_msgs = [s for s in p.wire.log if s.kind == KIND_PUBLIC_KEYS]
    assert len(key_msgs) == 2
    from heteronn.v1 import common_pb2

    for sent in key_msgs:
        blob = common_pb2.Payload.FromString(sent.data).blobs[CONTEXT_BLOB]
        ctx = ts.context_from(bytes(blob))
        assert not ctx.is_private() and not ctx.has_secret_key()
        vec = ts.ckks_vector(ctx, [1.0, 2.0], scale=2.0**40)
        with pytest.raises(ValueError):
            vec.decrypt()
    with pytest.raises(TypeError):
        pickle.dumps(p.host_keys)
    assert "secret" not in repr(p.host_keys).lower()


def test_no_secret_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run = Run({"bank": (3, 2)}, lr=0.05, momentum=0.9, rows=32)
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
