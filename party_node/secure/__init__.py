"""Secure (CKKS) projection layer: pure protocol classes, no transport.

See docs/secure-protocol.md for the message sequence and what each party learns.
"""

from party_node.secure.collaborator_side import SecureCollaboratorLayer
from party_node.secure.context import CkksParams, OwnKeys, PeerKeys
from party_node.secure.errors import SecureConfigError, SecureProtocolError
from party_node.secure.host_side import SecureHostLayer
from party_node.secure.params import (
    KIND_BWD_GRAD,
    KIND_BWD_WEIGHT,
    KIND_ENC_X,
    KIND_FWD,
    KIND_INIT_SHARE,
    KIND_PUBLIC_KEYS,
    KIND_SHARE,
    KIND_TEST_FWD,
    Message,
    SecureParams,
)
from party_node.secure.shares import projection_init_bound
from party_node.secure.validation import (
    SHAPE_AGREEMENT_PREFIX,
    agreement_value,
    check_agreement,
    check_feature_width,
    check_reduces_width,
    secure_params,
    shape_agreement,
    validate_host_config,
    validate_project_layer_config,
    validate_project_layer_lr,
    validate_projection_shape,
)

__all__ = [
    "KIND_BWD_GRAD",
    "KIND_BWD_WEIGHT",
    "KIND_ENC_X",
    "KIND_FWD",
    "KIND_INIT_SHARE",
    "KIND_PUBLIC_KEYS",
    "KIND_SHARE",
    "KIND_TEST_FWD",
    "SHAPE_AGREEMENT_PREFIX",
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
    "check_reduces_width",
    "projection_init_bound",
    "secure_params",
    "shape_agreement",
    "validate_host_config",
    "validate_project_layer_config",
    "validate_project_layer_lr",
    "validate_projection_shape",
]
