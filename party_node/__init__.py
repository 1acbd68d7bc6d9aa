"""heteronn party node: what runs inside one participant.

User-facing names (seed-compatible): ``logger`` and ``mock_context`` here, the schedulers in
``party_node.hetero_nn``.
"""

from party_node.errors import TaskFailed
from party_node.log import logger
from party_node.mock import mock_context

__all__ = ["TaskFailed", "logger", "mock_context"]
