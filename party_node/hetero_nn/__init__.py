"""The HeteroNN schedulers users subclass (names and signatures as in alphafed.hetero_nn)."""

from party_node.hetero_nn.collaborator import HeteroNNCollaboratorScheduler
from party_node.hetero_nn.host import HeteroNNHostScheduler
from party_node.hetero_nn.secure import (
    SecureHeteroNNCollaboratorScheduler,
    SecureHeteroNNHostScheduler,
)
from party_node.shuffle import aligned_order

__all__ = [
    "HeteroNNCollaboratorScheduler",
    "HeteroNNHostScheduler",
    "SecureHeteroNNCollaboratorScheduler",
    "SecureHeteroNNHostScheduler",
    "aligned_order",
]
