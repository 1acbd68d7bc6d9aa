"""Secure serving: the forward step of the secure projection layer (party_node.secure, the
same classes and messages as training's test forward), for new ids.

Once per host serving session the host sends its public keys and Enc_H(U); per batch the
collaborator computes Enc_H(X·(U + V)) with its own X and V (flooded, re-randomised) and the
host decrypts z = X·W. Neither party's share leaves it in the clear; the host never sees X;
the collaborator decrypts nothing. Pure: message dicts in and out; the transport carries
them."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from party_node.errors import BadMessage, BundleError, Overloaded, SessionUnknown
from party_node.secure import (
    OwnKeys,
    PeerKeys,
    SecureCollaboratorLayer,
    SecureHostLayer,
    SecureProtocolError,
    secure_params,
)
from party_node.secure.context import CONTEXT_BLOB, GALOIS_BLOB
from party_node.secure.params import Message, SecureParams
from party_node.serving.bundle import Bundle

KEY_BLOBS = (CONTEXT_BLOB, GALOIS_BLOB)


def bundle_params(bundle: Bundle) -> tuple[SecureParams, float, float]:
    """The agreed CKKS parameters, learning rate and momentum recorded in a secure bundle."""
    entry = (bundle.manifest.get("projection") or {}).get("params")
    if not entry:
        raise BundleError(f"secure bundle {bundle.path} does not record its secure parameters")
    params = secure_params(entry["feature_bound"], entry["delta_bound"])
    return params, float(entry["lr"]), float(entry["momentum"])


def split_keys(blobs: Mapping[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(public key blobs, the rest) of a session's payload."""
    keys = {k: v for k, v in blobs.items() if k in KEY_BLOBS}
    return keys, {k: v for k, v in blobs.items() if k not in KEY_BLOBS}


# ---- the collaborator ----------------------------------------------------------------------


@dataclass
class _Session:
    layer: SecureCollaboratorLayer
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)


class CollaboratorSessions:
    """The secure sessions open at a collaborator: per host session its keys, Enc_H(U) and
    a layer holding this party's share V."""

    def __init__(
        self, bundle: Bundle, share: torch.Tensor, max_sessions: int, idle_s: float
    ) -> None:
        self.params, self.lr, self.momentum = bundle_params(bundle)
        self.feature_key = bundle.feature_key
        self.in_dim, self.out_dim = (int(d) for d in share.shape)
        self.share = share.to(torch.float64).numpy()
        self.max_sessions, self.idle_s = max_sessions, idle_s
        # Our keys serve every session (the host needs our public context for its layer; we
        # decrypt nothing in serving, so no rotations are needed).
        self.keys = OwnKeys(self.params.ckks, ())
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def open(self, blobs: Mapping[str, bytes]) -> tuple[str, dict[str, bytes]]:
        """A session from the host's public keys and Enc_H(U); its id and our public keys."""
        key_blobs, share_blobs = split_keys(blobs)
        try:
            host_keys = PeerKeys(self.params.ckks, key_blobs)
            layer = SecureCollaboratorLayer(
                self.feature_key, self.in_dim, self.out_dim, self.lr, self.momentum,
                self.keys, host_keys, self.params, initial_share=self.share,
            )
            layer.set_host_share(share_blobs)
        except SecureProtocolError as exc:
            raise BadMessage(f"the host's secure session does not load: {exc}") from None
        with self._lock:
            self._expire()
            if len(self._sessions) >= self.max_sessions:
                layer.close()
                raise Overloaded(
                    f"{len(self._sessions)} secure sessions are open (limit "
                    "max_secure_sessions); they expire after session_idle_s"
                )
            session_id = secrets.token_hex(16)
            self._sessions[session_id] = _Session(layer)
        return session_id, self.keys.public_blobs()

    def _expire(self) -> None:
        now = time.monotonic()
        for sid, session in list(self._sessions.items()):
            if now - session.used > self.idle_s:
                session.layer.close()
                del self._sessions[sid]

    def check(self, session_id: str) -> None:
        with self._lock:
            if session_id not in self._sessions:
                raise SessionUnknown(
                    "no such secure session here (this collaborator restarted or forgot it); "
                    "open a new one"
                )

    def forward(self, session_id: str, features: torch.Tensor) -> Message:
        """Enc_H(X·W) of `features` (this party's X), in the test forward's message."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            self.check(session_id)
        assert session is not None
        session.used = time.monotonic()
        with session.lock:
            return session.layer.forward(features.to(torch.float64), train=False)

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.layer.close()
            self._sessions.clear()


# ---- the host -------------------------------------------------------------------------------


class HostSecureLayers:
    """The host's side: its keys, and per collaborator a layer holding its share U."""

    def __init__(self, bundle: Bundle, shares: Mapping[str, torch.Tensor]) -> None:
        self.params, self.lr, self.momentum = bundle_params(bundle)
        self.shares = {k: v.to(torch.float64).numpy() for k, v in shares.items()}
        steps: set[int] = set()
        for u in self.shares.values():
            steps |= SecureHostLayer.key_steps(*u.shape, self.params)
        self.keys = OwnKeys(self.params.ckks, steps)

    def layer(self, feature_key: str, collaborator_blobs: Mapping[str, bytes]) -> Any:
        """A layer for `feature_key` once the collaborator's public keys are known."""
        u = self.shares[feature_key]
        try:
            peer = PeerKeys(self.params.ckks, dict(collaborator_blobs))
        except SecureProtocolError as exc:
            raise BadMessage(
                f"collaborator '{feature_key}' sent keys that do not load: {exc}"
            ) from None
        return SecureHostLayer(
            feature_key, u.shape[0], u.shape[1], self.lr, self.momentum, self.keys, peer,
            self.params, initial_share=u, dtype=torch.float32,
        )

    def session_blobs(self, feature_key: str) -> dict[str, bytes]:
        """What OpenSecureSession carries: our public keys and Enc_H(U) for this collaborator.
        (A throw-away layer encrypts U: its peer keys are only needed for training steps.)"""
        u = self.shares[feature_key]
        layer = SecureHostLayer(
            feature_key, u.shape[0], u.shape[1], self.lr, self.momentum, self.keys,
            PeerKeys(self.params.ckks, self.keys.public_blobs()), self.params, initial_share=u,
        )
        try:
            blobs = layer.share_message()
        finally:
            layer.close()
        return {**self.keys.public_blobs(), **{k: v for k, v in blobs.items()
                                               if isinstance(v, bytes)}}


def decrypt_projection(layer: Any, message: Message, rows: int) -> torch.Tensor:
    """z = X·W of `rows` rows from a collaborator's SecureEmbed message (decrypted here)."""
    if rows == 0:
        return torch.empty(0, layer.out_dim)
    got = message.get("rows")
    if not isinstance(got, torch.Tensor) or got.numel() != 1 or int(got.item()) != rows:
        raise SecureProtocolError(f"the forward carries {got} rows, {rows} were found")
    z = layer.forward(message, train=False)
    return z.to(torch.float32)
