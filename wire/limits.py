"""Every bound on what the network may send a heteronn process, in one place.

Node and coordinator settings take their defaults from here (and say so in their field
descriptions); fixed bounds that need no setting are used directly. docs/operations.md lists
each one and how to change it. Also the rules for ids and for echoing untrusted text, so both
services apply the same ones.
"""

from __future__ import annotations

import re

# ---- ids ------------------------------------------------------------------------------------
#: A task or node id is one safe path component: it names folders (<workdir>/<node>/<task>).
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
ID_RULE = "1 to 128 characters of A-Z a-z 0-9 . _ - (not '.' or '..')"

# ---- timeouts -------------------------------------------------------------------------------
#: The longest schedule or calculation timeout a task or a join may ask for (7 days).
MAX_TIMEOUT_S = 7 * 24 * 3600.0

# ---- coordinator ----------------------------------------------------------------------------
#: Largest request the coordinator reads (bytes); its messages are small.
COORDINATOR_MAX_REQUEST_BYTES = 1 << 20
#: Participants of one task (coordinator setting max_participants).
MAX_PARTICIPANTS = 64
#: Tasks kept at once, ended ones included (coordinator setting max_tasks).
MAX_TASKS = 10_000
#: Ended tasks are deleted this long after they ended (coordinator setting retention_s).
RETENTION_S = 30 * 24 * 3600.0
#: A task nobody joins fails this long after it was created (coordinator setting
#: unjoined_expiry_s).
UNJOINED_EXPIRY_S = 24 * 3600.0
#: Open WatchTask streams per (task, node) and in total (coordinator settings
#: max_watches_per_node, max_watches).
MAX_WATCHES_PER_NODE = 4
MAX_WATCHES = 1024
#: ListTasks: default and largest page size, and the most bytes one page may carry.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 4 << 20
#: Characters kept of a failure reason, a report's error or a cancel reason.
MAX_REASON_CHARS = 2000
#: Characters of a feature key, an address, a split digest, a mode, an agreement or metric key.
MAX_NAME_CHARS = 256
#: Entries and characters per value of a join's agreement; entries of a report's metrics.
MAX_AGREEMENT_ENTRIES = 64
MAX_AGREEMENT_VALUE_CHARS = 4096
MAX_METRICS = 32

# ---- party node -----------------------------------------------------------------------------
#: Largest serialized Payload per FeatureExchange/GradientReturn call, unless a kind has its
#: own (node settings max_payload_bytes, max_payload_bytes_by_kind).
MAX_PAYLOAD_BYTES = 256 << 20
#: Bytes of messages queued per sender that this node's runtime has not taken yet (node
#: setting max_queued_bytes_per_sender); a sender over it waits (backpressure), bounded by
#: its call's deadline.
MAX_QUEUED_BYTES_PER_SENDER = 512 << 20
#: Data calls one sender may have open at once (node setting max_streams_per_sender): a
#: pipelined sender keeps up to 2 x its depth in flight (training_mode.MAX_DEPTH = 32).
MAX_STREAMS_PER_SENDER = 64
#: The longest deadline a peer's streaming call may carry (node setting max_call_s; the
#: node raises it to its own calculation_timeout + schedule_timeout when that is longer).
MAX_CALL_S = 3600.0
#: Dimensions and elements of one tensor on the wire.
MAX_TENSOR_DIMS = 8
MAX_TENSOR_ELEMENTS = 1 << 31

# ---- serving node (party_node.serving.limits.ServingLimits; settings limits.*) ----------------
#: Ids in one Predict call, and UTF-8 bytes of one id.
SERVING_MAX_IDS_PER_CALL = 1024
SERVING_MAX_ID_BYTES = 256
#: Calls answered at once (Predict at the host; Embed/SecureEmbed at a collaborator).
SERVING_MAX_CALLS_IN_FLIGHT = 256
#: Ids waiting in the host's batcher.
SERVING_MAX_QUEUED_IDS = 65_536
#: Ids in one online Embed/SecureEmbed call, and in one Embed call of a batch prediction.
SERVING_MAX_EMBED_IDS = 4096
SERVING_MAX_BATCH_EMBED_IDS = 16_384
#: A collaborator's cap on ids per second answered online (0: none).
SERVING_MAX_IDS_PER_S = 0.0
#: Batch predictions open at once at a collaborator, and how long one may sit idle (s).
SERVING_MAX_OPEN_BATCHES = 4
SERVING_BATCH_IDLE_S = 600.0
#: Secure sessions open at once at a collaborator, and how long one may sit idle (s).
SERVING_MAX_SECURE_SESSIONS = 4
SERVING_SESSION_IDLE_S = 3600.0
#: Deadline of a Predict call that sets none, and the most it may set (s).
SERVING_PREDICT_TIMEOUT_S = 5.0


def check_id(what: str, value: str) -> str:
    """`value` if it is a valid id, else ValueError naming `what` and the rule."""
    if ID_PATTERN.fullmatch(value) and value not in (".", ".."):
        return value
    raise ValueError(f"{what} {shown(value)} is not a valid id: use {ID_RULE}")


def is_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value)) and value not in (".", "..")


def shown(text: str, limit: int = 64) -> str:
    """Untrusted text as it may appear in a message or a log line: quoted, control
    characters escaped (a newline cannot forge a log line), cut to `limit` characters."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return repr(cut)


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Free text kept or echoed (a failure reason): at most `limit` characters, marked when
    cut."""
    if len(text) <= limit:
        return text
    keep = limit - 40
    return text[:keep] + f"… [{len(text) - keep} more characters cut]"


def one_line(text: str) -> str:
    """Free text for a log line: line breaks and other control characters escaped."""
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text
    )
