"""Where task state lives: a small write-through store behind the state machine.

The state machine keeps every task in memory and writes each change through to a store;
a restarted coordinator loads them back with `load_all`. Two backends share one test
suite: `InMemoryTaskStore` (tests, throwaway runs) and `SqliteTaskStore` (deployment).
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from services.domain import Participant, Phase, Report, Role, Task, TaskSpec

log = logging.getLogger("heteronn.coordinator")


class TaskStore(Protocol):
    """Persistence for tasks and their participants."""

    def load_all(self) -> list[Task]:
        """Every stored task, in creation order."""
        ...

    def save(self, task: Task) -> None:
        """Insert or replace the whole task, participants and current reports included."""
        ...

    def save_heartbeat(self, task_id: str, node_id: str, at: float) -> None:
        """Record a heartbeat; cheaper than `save` because it comes every second per node."""
        ...

    def delete(self, task_id: str) -> None:
        """Remove the task and its participants."""
        ...

    def close(self) -> None: ...


class InMemoryTaskStore:
    """Keeps deep copies so callers cannot mutate stored state by accident."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()

    def load_all(self) -> list[Task]:
        with self._lock:
            return [t.clone() for t in self._tasks.values()]

    def save(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.task_id] = task.clone()

    def save_heartbeat(self, task_id: str, node_id: str, at: float) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and node_id in task.participants:
                task.participants[node_id].last_heartbeat = at

    def delete(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    participants TEXT NOT NULL,          -- JSON list, spec order
    schedule_timeout_s REAL NOT NULL,
    calculation_timeout_s REAL NOT NULL,
    recover INTEGER NOT NULL,
    mode TEXT NOT NULL,
    phase INTEGER NOT NULL,
    round INTEGER NOT NULL,
    reason TEXT NOT NULL,
    failure_kind TEXT NOT NULL,
    metrics TEXT NOT NULL,               -- JSON object
    resume_round INTEGER NOT NULL,
    reports TEXT NOT NULL,               -- JSON object node_id -> report
    finish_after_test INTEGER NOT NULL,
    phase_started REAL NOT NULL,
    deadline REAL NOT NULL,
    updated REAL NOT NULL,
    resume_batch INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    retired TEXT NOT NULL DEFAULT '[]'   -- JSON list of incarnations of earlier attempts
);
CREATE TABLE IF NOT EXISTS participants (
    task_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    role INTEGER NOT NULL,
    feature_key TEXT NOT NULL,
    address TEXT NOT NULL,
    joined INTEGER NOT NULL,
    checkpoint_round INTEGER NOT NULL,
    schedule_timeout_s REAL NOT NULL,
    calculation_timeout_s REAL NOT NULL,
    agreement TEXT NOT NULL,             -- JSON object
    joined_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    checkpoint_batch INTEGER NOT NULL DEFAULT 0,
    incarnation TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (task_id, node_id)
);
"""

#: Columns added after the first release, created in databases written before them.
_ADDED_COLUMNS = {
    "tasks": (
        ("resume_batch", "INTEGER NOT NULL DEFAULT 0"),
        ("attempt", "INTEGER NOT NULL DEFAULT 1"),
        ("retired", "TEXT NOT NULL DEFAULT '[]'"),
    ),
    "participants": (
        ("checkpoint_batch", "INTEGER NOT NULL DEFAULT 0"),
        ("incarnation", "TEXT NOT NULL DEFAULT ''"),
    ),
}

_TASK_COLS = (
    "task_id, participants, schedule_timeout_s, calculation_timeout_s, recover, mode, phase, "
    "round, reason, failure_kind, metrics, resume_round, reports, finish_after_test, "
    "phase_started, deadline, updated, resume_batch, attempt, retired"
)
_PART_COLS = (
    "task_id, node_id, role, feature_key, address, joined, checkpoint_round, "
    "schedule_timeout_s, calculation_timeout_s, agreement, joined_at, last_heartbeat, "
    "checkpoint_batch, incarnation"
)


class SqliteTaskStore:
    """One SQLite file in WAL mode; one connection shared by all threads under a lock."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, declaration in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def load_all(self) -> list[Task]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_TASK_COLS} FROM tasks ORDER BY seq").fetchall()
            parts = self._db.execute(f"SELECT {_PART_COLS} FROM participants").fetchall()
        by_task: dict[str, dict[str, Participant]] = {}
        for p in parts:
            try:
                by_task.setdefault(p[0], {})[p[1]] = _participant_from_row(p)
            except (ValueError, TypeError, KeyError):  # the task's own row decides its fate
                log.warning("skipping an unreadable participant row of task %r", p[0])
        tasks = []
        for r in rows:
            try:
                tasks.append(_task_from_row(r, by_task.get(r[0], {})))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # One bad row (a hand edit, an older bug) must not stop a restart.
                log.error("skipping unreadable task row %r in %s: %s", r[0], self.path, exc)
        return tasks

    def save(self, task: Task) -> None:
        s = task.spec
        reports = {n: _report_to_json(r) for n, r in task.reports.items()}
        row = (
            s.task_id, json.dumps(s.participants), s.schedule_timeout_s, s.calculation_timeout_s,
            int(s.recover), s.mode, int(task.phase), task.round, task.reason, task.failure_kind,
            json.dumps(task.metrics), task.resume_round, json.dumps(reports),
            int(task.finish_after_test), task.phase_started, task.deadline, task.updated,
            task.resume_batch, task.attempt, json.dumps(task.retired),
        )
        part_rows = [
            (s.task_id, p.node_id, int(p.role), p.feature_key, p.address, int(p.joined),
             p.checkpoint_round, p.schedule_timeout_s, p.calculation_timeout_s,
             json.dumps(p.agreement), p.joined_at, p.last_heartbeat, p.checkpoint_batch,
             p.incarnation)
            for p in task.participants.values()
        ]
        marks = ", ".join("?" * len(row))
        update = ", ".join(f"{c.strip()}=excluded.{c.strip()}" for c in _TASK_COLS.split(",")[1:])
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    f"INSERT INTO tasks ({_TASK_COLS}) VALUES ({marks}) "
                    f"ON CONFLICT(task_id) DO UPDATE SET {update}",
                    row,
                )
                self._db.execute("DELETE FROM participants WHERE task_id=?", (s.task_id,))
                self._db.executemany(
                    f"INSERT INTO participants ({_PART_COLS}) VALUES ({', '.join('?' * 14)})",
                    part_rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def save_heartbeat(self, task_id: str, node_id: str, at: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE participants SET last_heartbeat=? WHERE task_id=? AND node_id=?",
                (at, task_id, node_id),
            )

    def delete(self, task_id: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM participants WHERE task_id=?", (task_id,))
            self._db.execute("DELETE FROM tasks WHERE task_id=?", (task_id,))
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _participant_from_row(p: tuple) -> Participant:
    return Participant(
        node_id=p[1], role=Role(p[2]), feature_key=p[3], address=p[4],
        joined=bool(p[5]), checkpoint_round=p[6], schedule_timeout_s=p[7],
        calculation_timeout_s=p[8], agreement=json.loads(p[9]), joined_at=p[10],
        last_heartbeat=p[11], checkpoint_batch=p[12], incarnation=p[13],
    )


def _task_from_row(r: tuple, known: dict[str, Participant]) -> Task:
    spec = TaskSpec(
        task_id=r[0], participants=json.loads(r[1]), schedule_timeout_s=float(r[2]),
        calculation_timeout_s=float(r[3]), recover=bool(r[4]), mode=r[5],
    )
    participants = {n: known.get(n, Participant(node_id=n)) for n in spec.participants}
    reports = {n: _report_from_json(d) for n, d in json.loads(r[12]).items()}
    return Task(
        spec=spec, participants=participants, phase=Phase(r[6]), round=r[7],
        reason=r[8], failure_kind=r[9], metrics=json.loads(r[10]), resume_round=r[11],
        reports=reports, finish_after_test=bool(r[13]), phase_started=r[14],
        deadline=r[15], updated=r[16], resume_batch=r[17], attempt=r[18],
        retired=json.loads(r[19]),
    )


def _report_to_json(report: Report) -> dict[str, object]:
    d = asdict(report)
    d["phase"] = int(report.phase)
    return d


def _report_from_json(d: dict[str, object]) -> Report:
    d = copy.deepcopy(d)
    d["phase"] = Phase(d["phase"])
    return Report(**d)  # type: ignore[arg-type]
