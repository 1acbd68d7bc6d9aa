"""Rules a task spec and a joining node must satisfy. Pure functions: they return the
problem as a message (or raise for a malformed request) and let the state machine decide
whether it fails the task."""

from __future__ import annotations

import math
import re

from services.domain import MODES, Participant, Report, Role, Task, TaskSpec
from services.errors import InvalidRequest


def validate_spec(spec: TaskSpec) -> None:
    """Raise InvalidRequest for a spec no node could ever run."""
    if not spec.task_id.strip():
        raise InvalidRequest("task_id must not be empty")
    if len(spec.participants) < 2:
        raise InvalidRequest(
            f"task '{spec.task_id}' lists {len(spec.participants)} participant(s) "
            f"{spec.participants}; a HeteroNN task needs a host and at least one collaborator"
        )
    if any(not n.strip() for n in spec.participants):
        raise InvalidRequest(f"task '{spec.task_id}': participant ids must not be empty")
    dupes = sorted({n for n in spec.participants if spec.participants.count(n) > 1})
    if dupes:
        raise InvalidRequest(
            f"task '{spec.task_id}' lists participant(s) {dupes} more than once; "
            "every node id must be unique"
        )
    for name, value in (
        ("schedule_timeout", spec.schedule_timeout_s),
        ("calculation_timeout", spec.calculation_timeout_s),
    ):
        if not (value > 0 and math.isfinite(value)):
            raise InvalidRequest(
                f"task '{spec.task_id}': {name} must be a positive number of seconds, got {value}"
            )
    if spec.mode not in MODES:
        raise InvalidRequest(
            f"task '{spec.task_id}': mode must be one of {list(MODES)}, got '{spec.mode}'"
        )


#: Incarnations: random tokens, bounded because they are stored.
INCARNATION = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
#: Incarnations of earlier attempts remembered per task (to ignore their late reports).
MAX_RETIRED = 64


def validate_join_request(task_id: str, node: Participant) -> None:
    """Raise InvalidRequest for a join that is malformed on its own."""
    if not INCARNATION.match(node.incarnation):
        raise InvalidRequest(
            f"node '{node.node_id}' sent an incarnation that is not a token of at most 64 "
            "letters, digits, '-' or '_'"
        )
    if node.checkpoint_round < 0 or node.checkpoint_batch < 0:
        raise InvalidRequest(
            f"node '{node.node_id}' sent a negative checkpoint position "
            f"({node.checkpoint_round}, {node.checkpoint_batch})"
        )
    if node.role not in (Role.HOST, Role.COLLABORATOR):
        raise InvalidRequest(
            f"node '{node.node_id}' joined task '{task_id}' without a role; "
            "it must join as host or collaborator"
        )
    for name, value in (
        ("schedule_timeout", node.schedule_timeout_s),
        ("calculation_timeout", node.calculation_timeout_s),
    ):
        if value < 0 or not math.isfinite(value):
            raise InvalidRequest(
                f"node '{node.node_id}' sent {name}={value}; use a positive number of seconds "
                "(or 0 for the task's own)"
            )


def conflict_with_others(task: Task, node: Participant) -> str:
    """Why `node` cannot join alongside the nodes already joined ('' when it can)."""
    tid = task.task_id
    for other in task.participants.values():
        if not other.joined or other.node_id == node.node_id:
            continue
        if node.role == Role.HOST and other.role == Role.HOST:
            return (
                f"task '{tid}' has two hosts: '{other.node_id}' and '{node.node_id}'; exactly one "
                "party holds the labels, make the other one a collaborator"
            )
        if node.feature_key and node.feature_key == other.feature_key:
            return (
                f"nodes '{other.node_id}' and '{node.node_id}' of task '{tid}' both use "
                f"feature_key '{node.feature_key}'; every party must use its own feature_key"
            )
        for key in sorted(node.agreement.keys() & other.agreement.keys()):
            if node.agreement[key] != other.agreement[key]:
                theirs, ours = _differing_parts(other.agreement[key], node.agreement[key])
                return (
                    f"nodes '{other.node_id}' and '{node.node_id}' of task '{tid}' disagree on "
                    f"'{key}': '{other.node_id}' has {theirs}, '{node.node_id}' has {ours}; "
                    f"every party must use the same {key}"
                )
    return ""


def _differing_parts(a: str, b: str) -> tuple[str, str]:
    """Only the ';'-separated settings where two agreement values differ, so the message
    names the setting to fix (whole values when they do not line up)."""
    parts_a, parts_b = a.split(";"), b.split(";")
    if len(parts_a) != len(parts_b):
        return a, b
    pairs = [(x, y) for x, y in zip(parts_a, parts_b, strict=True) if x != y]
    return ";".join(x for x, _ in pairs), ";".join(y for _, y in pairs)


def same_join(old: Participant, new: Participant) -> bool:
    """A reconnecting node repeating its earlier join (allowed in any running phase): the
    same process (incarnation) with the same details."""
    return (old.role, old.feature_key, old.address, old.agreement, old.incarnation) == (
        new.role,
        new.feature_key,
        new.address,
        new.agreement,
        new.incarnation,
    )


def stale_report(task: Task, node: Participant, rep: Report) -> bool:
    """A report from an earlier process of `node`: not the one joined in this attempt, or
    one of an earlier attempt. Reports without an incarnation (older nodes) count as fresh."""
    if not rep.incarnation:
        return False
    if node.joined:
        return bool(node.incarnation) and rep.incarnation != node.incarnation
    return rep.incarnation in task.retired


def names(nodes: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in nodes)
