"""What both secure roles share: message conversion, error translation, the agreement entry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from party_node.runtime.errors import ConfigError, TaskFailed
from party_node.runtime.links import Message, Participant
from party_node.secure import (
    SecureConfigError,
    SecureParams,
    SecureProtocolError,
    agreement_value,
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


@contextmanager
def protocol_errors(peer: Participant, where: str) -> Iterator[None]:
    """Protocol violations name the peer and the step; config mistakes stay ConfigErrors."""
    try:
        yield
    except SecureConfigError as exc:
        raise ConfigError(str(exc)) from None
    except SecureProtocolError as exc:
        raise TaskFailed(
            f"secure projection with {peer.role} '{peer.node_id}' failed in {where}: {exc}"
        ) from None
