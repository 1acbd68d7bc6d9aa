"""Why a task fails: pure functions that turn task state into a reason a person can act on
(and a short kind for metrics). The lifecycle decides when to ask; these decide what to say."""

from __future__ import annotations

from services.domain import PHASE_ORDER, Phase, Report, Task
from services.joining import names


def overdue(
    task: Task, now: float, min_liveness_s: float = 0.0, unjoined_expiry_s: float = 0.0
) -> tuple[str, str] | None:
    """(kind, reason) when a deadline of a running task has passed, else None.

    A node is dead after max(schedule_timeout, `min_liveness_s`) without a heartbeat; the
    floor keeps a ~1 s heartbeat from looking like a death under a tiny schedule_timeout.

    A task nobody has joined fails `unjoined_expiry_s` after its creation (0: never).

    Order matters: a node that never joined, then a node that died (heartbeats, noticed
    within schedule_timeout), then a phase that ran over calculation_timeout.
    """
    tid = task.task_id
    sched, calc, _ = task.effective_timeouts()
    joined = [p for p in task.participants.values() if p.joined]
    if task.phase == Phase.WAITING_FOR_NODES:
        if not joined and unjoined_expiry_s and now > task.phase_started + unjoined_expiry_s:
            return "join_timeout", (
                f"no participant joined task {tid} within {unjoined_expiry_s:g} s of its "
                "creation (coordinator setting unjoined_expiry_s); start its nodes, then "
                "create it again with recover=true")
        for p in joined:
            own = p.schedule_timeout_s or task.spec.schedule_timeout_s
            if now > p.joined_at + own:
                missing = [n for n, q in task.participants.items() if not q.joined]
                return "join_timeout", (
                    f"participant(s) {names(missing)} did not join task {tid} within {own:g} s "
                    f"(schedule_timeout of '{p.node_id}'); start its node with this task id and "
                    "coordinator address")
    for p in joined:
        silent = now - p.last_heartbeat
        if silent > max(sched, min_liveness_s):
            return "heartbeat_lost", (
                f"node '{p.node_id}' stopped sending heartbeats {silent:.1f} s ago during "
                f"{task.phase_label()}; its process probably died or lost its network. "
                "Restart every party with recover=True to resume from the last complete round")
    if task.phase in PHASE_ORDER and task.deadline and now > task.deadline:
        waiting = [p.node_id for p in joined if p.node_id not in task.reports]
        verb = "is" if len(waiting) == 1 else "are"
        return "phase_timeout", (
            f"phase {task.phase_label()} exceeded calculation_timeout={calc:g} s waiting for "
            f"{names(waiting)}; raise calculation_timeout or find why {names(waiting)} {verb} slow")
    return None


def name_node(rep: Report) -> str:
    """A node's error text, prefixed with the node and phase unless it names the node."""
    if f"'{rep.node_id}'" in rep.error or f"node {rep.node_id}" in rep.error:
        return rep.error
    label = f"{rep.phase.name} round {rep.round}" if rep.round else rep.phase.name
    return f"node '{rep.node_id}' (phase {label}): {rep.error}"


def split_mismatch(task: Task, host_id: str) -> str:
    """'' when every SPLIT report agrees on sizes and digest; else who got what."""
    reps = [task.reports[host_id]] + [r for n, r in task.reports.items() if n != host_id]
    if len({(r.train_size, r.test_size, r.split_digest) for r in reps}) == 1:
        return ""
    parts = [f"host '{host_id}' {reps[0].train_size} train / {reps[0].test_size} test"]
    parts += [f"'{r.node_id}' {r.train_size} / {r.test_size}" for r in reps[1:]]
    sizes_equal = len({(r.train_size, r.test_size) for r in reps}) == 1
    extra = " (same sizes, different ids)" if sizes_equal else ""
    return (f"split_dataset gave different splits on different parties: {', '.join(parts)}"
            f"{extra}; split_dataset must be deterministic and identical on every party")
