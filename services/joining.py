"""Rules a task spec and a joining node must satisfy. Pure functions: they return the
problem as a message (or raise for a malformed request) and let the state machine decide
whether it fails the task."""

from __future__ import annotations

import math
import re
from collections import Counter

from services.domain import (
    MODES,
    PHASE_ORDER,
    Participant,
    Report,
    Role,
    Task,
    TaskLimits,
    TaskSpec,
)
from services.errors import InvalidRequest
from wire import limits


def valid_id(what: str, value: str) -> str:
    """`value` if it is one safe path component (wire.limits.ID_PATTERN); else InvalidRequest."""
    try:
        return limits.check_id(what, value)
    except ValueError as err:
        raise InvalidRequest(str(err)) from None


def _timeout(owner: str, name: str, value: float, allow_zero: bool) -> None:
    ok = (value >= 0 if allow_zero else value > 0) and value <= limits.MAX_TIMEOUT_S
    if not (ok and math.isfinite(value)):
        zero = " (or 0 for the task's own)" if allow_zero else ""
        raise InvalidRequest(
            f"{owner}: {name} must be a positive number of seconds up to "
            f"{limits.MAX_TIMEOUT_S:g}{zero}, got {value:g}"
        )


def _text(owner: str, name: str, value: str, limit: int = limits.MAX_NAME_CHARS) -> None:
    if len(value) > limit:
        raise InvalidRequest(f"{owner}: {name} has {len(value)} characters; at most {limit}")


def validate_spec(spec: TaskSpec, task_limits: TaskLimits | None = None) -> None:
    """Raise InvalidRequest for a spec no node could ever run, or one over the limits."""
    most = (task_limits or TaskLimits()).max_participants
    tid = valid_id("task_id", spec.task_id)
    if not 2 <= len(spec.participants) <= most:
        raise InvalidRequest(
            f"task '{tid}' lists {len(spec.participants)} participant(s); a HeteroNN task "
            f"needs a host and at least one collaborator, and at most {most} participants "
            "(coordinator setting max_participants)"
        )
    for node in spec.participants:
        valid_id(f"task '{tid}': participant", node)
    dupes = sorted(n for n, k in Counter(spec.participants).items() if k > 1)
    if dupes:
        raise InvalidRequest(
            f"task '{tid}' lists participant(s) {dupes} more than once; "
            "every node id must be unique"
        )
    _timeout(f"task '{tid}'", "schedule_timeout", spec.schedule_timeout_s, allow_zero=False)
    _timeout(f"task '{tid}'", "calculation_timeout", spec.calculation_timeout_s, allow_zero=False)
    if spec.mode not in MODES:
        raise InvalidRequest(
            f"task '{tid}': mode must be one of {list(MODES)}, got {limits.shown(spec.mode)}"
        )


#: Incarnations: random tokens, bounded because they are stored.
INCARNATION = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
#: Incarnations of earlier attempts remembered per task (to ignore their late reports).
MAX_RETIRED = 64


def validate_join_request(task_id: str, node: Participant) -> None:
    """Raise InvalidRequest for a join that is malformed on its own."""
    who = f"node '{node.node_id}'"
    if not INCARNATION.match(node.incarnation):
        raise InvalidRequest(
            f"{who} sent an incarnation that is not a token of at most 64 letters, digits, "
            "'-' or '_'"
        )
    if node.role not in (Role.HOST, Role.COLLABORATOR):
        raise InvalidRequest(
            f"{who} joined task '{task_id}' without a role; it must join as host or collaborator"
        )
    _timeout(who, "schedule_timeout", node.schedule_timeout_s, allow_zero=True)
    _timeout(who, "calculation_timeout", node.calculation_timeout_s, allow_zero=True)
    _text(who, "feature_key", node.feature_key)
    _text(who, "address", node.address)
    for name in ("checkpoint_round", "checkpoint_batch"):
        if getattr(node, name) < 0:
            raise InvalidRequest(f"{who}: {name} must be >= 0, got {getattr(node, name)}")
    if len(node.agreement) > limits.MAX_AGREEMENT_ENTRIES:
        raise InvalidRequest(
            f"{who}: agreement has {len(node.agreement)} entries; at most "
            f"{limits.MAX_AGREEMENT_ENTRIES}"
        )
    for key, value in node.agreement.items():
        _text(who, "an agreement key", key)
        _text(who, f"agreement '{limits.one_line(key)}'", value, limits.MAX_AGREEMENT_VALUE_CHARS)


def validate_report(rep: Report) -> None:
    """Raise InvalidRequest for a report no node of ours sends: negative sizes or rounds,
    too many metrics, oversized strings. The error text is cut, not refused."""
    who = f"node '{rep.node_id}'"
    for name in ("round", "train_size", "test_size", "checkpoint_round"):
        if getattr(rep, name) < 0:
            raise InvalidRequest(f"{who}: {name} must be >= 0, got {getattr(rep, name)}")
    if rep.phase not in PHASE_ORDER and not rep.error:
        raise InvalidRequest(
            f"{who} reported success for phase {rep.phase.name}; only PSI, SPLIT, TRAIN and TEST "
            "are reported (any phase with an error)"
        )
    _text(who, "split_digest", rep.split_digest)
    if len(rep.metrics) > limits.MAX_METRICS:
        raise InvalidRequest(
            f"{who}: {len(rep.metrics)} metrics; at most {limits.MAX_METRICS}"
        )
    for key in rep.metrics:
        _text(who, "a metric name", key)
    rep.error = limits.clip(rep.error)


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


def spec_differences(old: TaskSpec, new: TaskSpec) -> list[str]:
    """The fields in which a repeated CreateTask differs from the task's spec (`recover`
    does not count: it only matters once the task has ended)."""
    pairs = {
        "participants": (sorted(old.participants), sorted(new.participants)),
        "schedule_timeout": (old.schedule_timeout_s, new.schedule_timeout_s),
        "calculation_timeout": (old.calculation_timeout_s, new.calculation_timeout_s),
        "mode": (old.mode, new.mode),
    }
    return [name for name, (a, b) in pairs.items() if a != b]


def names(nodes: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in nodes)


def recreate(old: Task, spec: TaskSpec) -> tuple[str, str]:
    """What creating `spec` where task `old` exists does: ("same", "") for the running task
    itself, ("retry", "") for a new attempt of an ended one (recover, same participants),
    ("refuse", why) otherwise."""
    tid = spec.task_id
    if not old.phase.terminal:
        differing = spec_differences(old.spec, spec)
        if not differing:
            return "same", ""
        return "refuse", (
            f"task '{tid}' already exists with another {', '.join(differing)} "
            f"(participants {old.spec.participants}, phase {old.phase_label()}); use "
            "another task id, or repeat the create with the same spec"
        )
    if not spec.recover or sorted(old.spec.participants) != sorted(spec.participants):
        why = f": {old.reason}" if old.reason else ""
        return "refuse", (
            f"task '{tid}' already {old.phase.name}{why}; use another task id, or "
            f"recover=true with the same participants {old.spec.participants} to resume "
            "it from the newest checkpoint every party has"
        )
    return "retry", ""
