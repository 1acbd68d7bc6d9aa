"""Private set intersection, the whole of it: group operations (`group`), the worker pool
that spreads them over cores (`pool`), the step frames and their checks (`frames`), the
protocol of each side (`protocol`) and its gRPC glue (`rpc`)."""

from party_node.psi.frames import PsiError, PsiFrame
from party_node.psi.pool import PsiPool
from party_node.psi.protocol import CollaboratorPsi, HostBlinding, HostPsi, intersect_all
from party_node.psi.rpc import CollaboratorPsiSession, run_host_psi, serve_psi

__all__ = [
    "CollaboratorPsi",
    "CollaboratorPsiSession",
    "HostBlinding",
    "HostPsi",
    "PsiError",
    "PsiFrame",
    "PsiPool",
    "intersect_all",
    "run_host_psi",
    "serve_psi",
]
