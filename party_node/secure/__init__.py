"""Secure (CKKS) projection layer: pure protocol classes, no transport.

See docs/secure-protocol.md for the message sequence and what each party learns.
"""

from party_node.secure.collaborator_side import SecureCollaboratorLayer
from party_node.secure.context import CkksParams, OwnKeys, PeerKeys
from party_node.secure.errors import SecureConfigError, SecureProtocolError
from party_node.secure.host_side import SecureHostLayer
from party_node.secure.params import (
    KIND_BWD_ENC,
    KIND_BWD_GRAD,
    KIND_BWD_MASKED,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD_MASKED,
    KIND_FWD_SHARE,
    KIND_PUBLIC_KEYS,
    KIND_TEST_ENC_X,
    KIND_TEST_FWD_MASKED,
    KIND_TEST_FWD_SHARE,
    Message,
    SecureParams,
)
from party_node.secure.validation import (
    agreement_value,
    check_agreement,
    check_feature_width,
    validate_host_config,
    validate_project_layer_config,
    validate_project_layer_lr,
)

__all__ = [
    "KIND_BWD_ENC",
    "KIND_BWD_GRAD",
    "KIND_BWD_MASKED",
    "KIND_BWD_WEIGHT",
    "KIND_ENC_X",
    "KIND_FWD_MASKED",
    "KIND_FWD_SHARE",
    "KIND_PUBLIC_KEYS",
    "KIND_TEST_ENC_X",
    "KIND_TEST_FWD_MASKED",
    "KIND_TEST_FWD_SHARE",
    "CkksParams",
    "Message",
    "OwnKeys",
    "PeerKeys",
    "SecureCollaboratorLayer",
    "SecureConfigError",
    "SecureHostLayer",
    "SecureParams",
    "SecureProtocolError",
    "agreement_value",
    "check_agreement",
    "check_feature_width",
    "validate_host_config",
    "validate_project_layer_config",
    "validate_project_layer_lr",
]
