"""Test helper: run the secure protocol in-process, every message through real Payload bytes.

`Wire.send` turns a message dict into the serialized `heteronn.v1.Payload` the transport would
send (tensors via wire.tensor_codec, ciphertexts as blobs), records those bytes, and hands the
receiver what it would decode. Tests inspect `Wire.log` for privacy properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from heteronn.v1 import common_pb2
from party_node.secure import (
    KIND_BWD_GRAD,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD,
    KIND_INIT_SHARE,
    KIND_PUBLIC_KEYS,
    KIND_SHARE,
    KIND_TEST_FWD,
    OwnKeys,
    PeerKeys,
    SecureCollaboratorLayer,
    SecureHostLayer,
    SecureParams,
)
from wire.tensor_codec import tensor_from_proto, tensor_to_proto


@dataclass
class Sent:
    sender: str
    receiver: str
    kind: str
    data: bytes


@dataclass
class Wire:
    log: list[Sent] = field(default_factory=list)

    def send(self, sender: str, receiver: str, kind: str, msg: dict) -> dict:
        payload = common_pb2.Payload(
            header=common_pb2.Header(task_id="t", round=1, batch=0, sender=sender, kind=kind)
        )
        for name, value in msg.items():
            if isinstance(value, bytes):
                payload.blobs[name] = value
            else:
                payload.tensors[name].CopyFrom(tensor_to_proto(value))
        data = payload.SerializeToString()
        self.log.append(Sent(sender, receiver, kind, data))
        back = common_pb2.Payload.FromString(data)
        out: dict = {name: bytes(b) for name, b in back.blobs.items()}
        out.update({name: tensor_from_proto(t) for name, t in back.tensors.items()})
        return out

    def received_by(self, party: str, kind: str | None = None) -> list[common_pb2.Payload]:
        return [
            common_pb2.Payload.FromString(s.data)
            for s in self.log
            if s.receiver == party and (kind is None or s.kind == kind)
        ]

    def bytes_per_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.log:
            out[s.kind] = out.get(s.kind, 0) + len(s.data)
        return out


@dataclass
class Parties:
    """A host and its collaborators, keys exchanged over the recorded wire."""

    wire: Wire
    host_keys: OwnKeys
    coll_keys: dict[str, OwnKeys]
    hosts: dict[str, SecureHostLayer]
    colls: dict[str, SecureCollaboratorLayer]
    #: Weight-gradient messages a collaborator takes only inside its next forward pass.
    pending: dict[str, dict] = field(default_factory=dict)


def make_parties(
    dims: dict[str, tuple[int, int]],
    lr: float,
    momentum: float,
    initial_w: dict[str, np.ndarray] | None,
    params: SecureParams | None = None,
    share_sd: float = 8.0,
) -> Parties:
    """Keys exchanged and shares set up over the recorded wire: with `initial_w`, W = that
    (shares U0 random, V0 = W - U0, for equivalence tests); without, the protocol's own
    initial exchange (W0 = a ⊙ b)."""
    params = params or SecureParams()
    wire = Wire()
    steps: set[int] = set()
    for din, dout in dims.values():
        steps |= SecureHostLayer.key_steps(din, dout, params)
    host_keys = OwnKeys(params.ckks, steps)
    coll_keys, hosts, colls = {}, {}, {}
    for key, (din, dout) in dims.items():
        ck = OwnKeys(params.ckks, SecureCollaboratorLayer.key_steps(din, dout, params))
        coll_keys[key] = ck
        to_host = wire.send(key, "host", KIND_PUBLIC_KEYS, ck.public_blobs())
        to_coll = wire.send("host", key, KIND_PUBLIC_KEYS, host_keys.public_blobs())
        u0 = v0 = None
        if initial_w is not None:
            u0 = np.random.default_rng(len(key)).normal(0, share_sd, size=(din, dout))
            v0 = initial_w[key] - u0
        host = SecureHostLayer(
            key,
            din,
            dout,
            lr,
            momentum,
            host_keys,
            PeerKeys(params.ckks, to_host),
            params,
            initial_share=u0,
            dtype=torch.float64,
        )
        coll = SecureCollaboratorLayer(
            key,
            din,
            dout,
            lr,
            momentum,
            ck,
            PeerKeys(params.ckks, to_coll),
            params,
            initial_share=v0,
        )
        if initial_w is None:
            m = wire.send("host", key, KIND_INIT_SHARE, host.init_request())
            host.init_finish(wire.send(key, "host", KIND_INIT_SHARE, coll.init_reply(m)))
        coll.set_host_share(wire.send("host", key, KIND_SHARE, host.share_message()))
        hosts[key], colls[key] = host, coll
    return Parties(wire, host_keys, coll_keys, hosts, colls)


def secure_forward(p: Parties, key: str, x: torch.Tensor, train: bool = True) -> torch.Tensor:
    """The collaborator's forward as the runtime runs it: the product on Enc_H(U) first, then
    the previous batch's weight step if it is still pending, then X·V and the finish."""
    host, coll, w = p.hosts[key], p.colls[key], p.wire
    kind = KIND_FWD if train else KIND_TEST_FWD
    coll.start_forward(x, train=train)
    if key in p.pending:
        coll.apply_weight_gradient(p.pending.pop(key))
    m = w.send(key, "host", kind, coll.finish_forward())
    return host.forward(m, train=train)


def secure_backward(
    p: Parties, key: str, delta: torch.Tensor, defer_weight: bool = False
) -> torch.Tensor:
    """With `defer_weight`, the weight step waits for the next secure_forward (as in a task)."""
    host, coll, w = p.hosts[key], p.colls[key], p.wire
    enc_x = w.send(key, "host", KIND_ENC_X, coll.encrypt_features())
    grad = w.send("host", key, KIND_BWD_GRAD, host.backward(delta))
    weight = w.send("host", key, KIND_BWD_WEIGHT, host.weight_gradient(enc_x))
    dx = coll.finish_backward(grad)
    if defer_weight:
        p.pending[key] = weight
    else:
        coll.apply_weight_gradient(weight)
    return dx


__all__ = ["Parties", "Wire", "make_parties", "secure_backward", "secure_forward"]
