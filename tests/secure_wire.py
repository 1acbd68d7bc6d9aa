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
    KIND_BWD_ENC,
    KIND_BWD_GRAD,
    KIND_BWD_MASKED,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD_MASKED,
    KIND_FWD_SHARE,
    KIND_PUBLIC_KEYS,
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


def make_parties(
    dims: dict[str, tuple[int, int]],
    lr: float,
    momentum: float,
    initial_w: dict[str, np.ndarray],
    params: SecureParams | None = None,
) -> Parties:
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
        u0 = np.random.default_rng(len(key)).normal(size=(din, dout))
        hosts[key] = SecureHostLayer(
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
        colls[key] = SecureCollaboratorLayer(
            key,
            din,
            dout,
            lr,
            momentum,
            ck,
            PeerKeys(params.ckks, to_coll),
            params,
            initial_share=initial_w[key] - u0,
        )
    return Parties(wire, host_keys, coll_keys, hosts, colls)


def secure_forward(p: Parties, key: str, x: torch.Tensor, train: bool = True) -> torch.Tensor:
    host, coll, w = p.hosts[key], p.colls[key], p.wire
    m = w.send(key, "host", KIND_ENC_X, coll.encrypt_features(x, train=train))
    m = w.send("host", key, KIND_FWD_MASKED, host.forward(m, train=train))
    m = w.send(key, "host", KIND_FWD_SHARE, coll.combine_forward(m))
    return host.finish_forward(m)


def secure_backward(p: Parties, key: str, delta: torch.Tensor) -> torch.Tensor:
    host, coll, w = p.hosts[key], p.colls[key], p.wire
    m = w.send("host", key, KIND_BWD_ENC, host.backward(delta))
    reply = coll.backward(m)  # meanwhile the host computes the weight gradient
    weight = w.send("host", key, KIND_BWD_WEIGHT, host.weight_gradient())
    m = w.send(key, "host", KIND_BWD_MASKED, reply)
    coll.apply_weight_gradient(weight)
    m = w.send("host", key, KIND_BWD_GRAD, host.finish_backward(m))
    return coll.finish_backward(m)


__all__ = ["Parties", "Wire", "make_parties", "secure_backward", "secure_forward"]
