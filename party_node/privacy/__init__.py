"""Label privacy: the attacks a collaborator can run on the gradients it receives, the live
leak metric the host computes from its own outgoing gradients, and the defences it can apply
before they leave (docs/privacy.md). Pure torch/numpy/scipy: no transport."""

from party_node.privacy.meter import LeakMeter, LeakScore, class_labels
from party_node.privacy.settings import AGREEMENT_KEY, parse_defence

__all__ = ["AGREEMENT_KEY", "LeakMeter", "LeakScore", "class_labels", "parse_defence"]
