"""What both secure roles share: message conversion, error translation, the agreement entry,
the key exchange and the receive-compute-reply step (`SecureExchange`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from party_node.errors import TaskFailed
from party_node.runtime.links import Message, Participant
from party_node.secure import (
    KIND_PUBLIC_KEYS,
    OwnKeys,
    PeerKeys,
    SecureParams,
    SecureProtocolError,
    agreement_value,
    secure_params,
)

#: Key of the coordinator's agreement map that must be equal at every party.
AGREEMENT_KEY = "secure_projection"


def to_link(kind: str, round_no: int, batch: int, msg: dict) -> Message:
    """A protocol message dict as a runtime Message (tensors vs blobs by value type)."""
    tensors = {k: v for k, v in msg.items() if isinstance(v, torch.Tensor)}
    blobs = {k: v for k, v in msg.items() if isinstance(v, bytes)}
    return Message(kind, round_no, batch, tensors=tensors, blobs=blobs)


def from_link(msg: Message) -> dict:
    return {**msg.tensors, **msg.blobs}


def agreement(scheduler: object, params: SecureParams) -> dict[str, str]:
    return {
        AGREEMENT_KEY: agreement_value(
            scheduler.project_layer_lr, scheduler.project_layer_momentum, params
        )
    }


def secure_bundle_params(scheduler: Any, params: SecureParams) -> dict[str, float]:
    """What serving needs to rebuild the agreed parameters (the bundle's manifest)."""
    return {
        "feature_bound": params.feature_bound,
        "delta_bound": params.delta_bound,
        "lr": float(scheduler.project_layer_lr),
        "momentum": float(scheduler.project_layer_momentum),
    }


@contextmanager
def protocol_errors(peer: Participant, where: str) -> Iterator[None]:
    """Protocol violations name the peer and the step (config mistakes pass as ConfigErrors)."""
    try:
        yield
    except SecureProtocolError as exc:
        raise TaskFailed(
            f"secure projection with {peer.role} '{peer.node_id}' failed in {where}: {exc}"
        ) from None


class SecureExchange:
    """Mixed into both secure roles (before the plain role): CKKS parameters, this party's
    keys, and protocol messages as dicts, with violations reported against the peer.

    Relies on the Role's `s`, `peers`, `expect` and the plain role's `me`."""

    s: Any
    peers: Any
    me: str
    expect: Callable[..., Message]

    def init_secure(self) -> None:
        """Parameters now (the bounds are scheduler settings); keys once the layer shapes are
        known (the first batch)."""
        self.params = secure_params(
            self.s.project_layer_feature_bound, self.s.project_layer_delta_bound
        )
        self.keys: OwnKeys | None = None

    def agreement(self) -> dict[str, str]:
        return {**super().agreement(), **agreement(self.s, self.params)}  # type: ignore[misc]

    def make_keys(self, steps: set[int]) -> OwnKeys:
        """This party's key pair, with Galois keys for the rotations the peers will apply."""
        self.keys = OwnKeys(self.params.ckks, steps)
        return self.keys

    def send_keys(self, peer: Participant, round_no: int, **tensors: torch.Tensor) -> None:
        assert self.keys is not None
        blobs = self.keys.public_blobs()
        msg = Message(KIND_PUBLIC_KEYS, round_no, 0, tensors=tensors, blobs=blobs)
        self.peers.send(peer.node_id, msg)

    def peer_keys(self, peer: Participant, msg: Message) -> PeerKeys:
        """The peer's public keys from its KIND_PUBLIC_KEYS message."""
        with protocol_errors(peer, "the key exchange"):
            return PeerKeys(self.params.ckks, msg.blobs)

    def receive(self, peer: Participant, kind: str, round_no: int, b: int) -> dict:
        """The peer's next message, checked to be `kind` for (round, batch), as a dict."""
        return from_link(self.expect(peer, kind, round_no, b, self.me))

    def reply(self, peer: Participant, kind: str, round_no: int, b: int, msg: dict) -> None:
        self.peers.send(peer.node_id, to_link(kind, round_no, b, msg))

    def step(
        self,
        peer: Participant,
        kinds: tuple[str, str],
        round_no: int,
        b: int,
        fn: Callable[[dict], dict],
        what: str,
    ) -> None:
        """Receive kinds[0], compute fn on it, reply with kinds[1]."""
        msg = self.receive(peer, kinds[0], round_no, b)
        with protocol_errors(peer, what):
            out = fn(msg)
        self.reply(peer, kinds[1], round_no, b, out)
