"""What one party does in each phase, by role. `make_role` picks the class from the
scheduler's `_role` and `_secure` flags."""

from __future__ import annotations

from typing import Any

from party_node.runtime.links import AbortSignal, PeerLink
from party_node.runtime.roles.base import Role
from party_node.runtime.watchdog import Watchdog


def make_role(
    scheduler: Any, peers: PeerLink, abort: AbortSignal, watchdog: Watchdog, node_id: str
) -> Role:
    from party_node.runtime.roles.collaborator import CollaboratorRole
    from party_node.runtime.roles.host import HostRole

    if getattr(scheduler, "_secure", False):
        from party_node.runtime.roles.secure import SecureCollaboratorRole, SecureHostRole

        cls: type[Role] = SecureHostRole if scheduler._role == "host" else SecureCollaboratorRole
    else:
        cls = HostRole if scheduler._role == "host" else CollaboratorRole
    return cls(scheduler, peers, abort, watchdog, node_id)


__all__ = ["Role", "make_role"]
