"""Secure-mode roles (CKKS projection layer); `make_role` imports them from here."""

from party_node.runtime.roles.secure_collaborator import SecureCollaboratorRole
from party_node.runtime.roles.secure_host import SecureHostRole

__all__ = ["SecureCollaboratorRole", "SecureHostRole"]
