"""One task at one party: join, then execute the coordinator's phase commands until the task
finishes or fails. Every failure becomes a `TaskFailed` with a reason that names the party,
the phase and the fix, and is reported so every other party stops too."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from party_node.errors import ConfigError, NamedKeyError, TaskFailed
from party_node.runtime.batch_checkpoints import Resume
from party_node.runtime.bundle_export import export_bundle
from party_node.runtime.checkpoint import CheckpointStore, Position
from party_node.runtime.links import (
    AbortSignal,
    Command,
    ControlLink,
    JoinInfo,
    Participant,
    PeerLink,
    Report,
    TaskObserver,
)
from party_node.runtime.outputs import output_dir, write_json
from party_node.runtime.roles import Role, make_role
from party_node.runtime.watchdog import Watchdog

log = logging.getLogger("heteronn")


@dataclass(frozen=True)
class RunSettings:
    node_id: str
    task_id: str
    workdir: Path
    advertise: str
    recover: bool = False
    #: Node settings every party must share (e.g. the PSI engine), added to the join agreement.
    agreement: dict[str, str] = field(default_factory=dict)


def split_digest(task_id: str, train: set, test: set) -> str:
    """Salted digest of the split, compared across parties by the coordinator; ids never leave."""
    h = hashlib.sha256(task_id.encode())
    for name, ids in (("train", train), ("test", test)):
        h.update(name.encode())
        for item in sorted(str(i) for i in ids):
            h.update(item.encode() + b"\x00")
    return h.hexdigest()


class TaskRuntime:
    def __init__(
        self,
        scheduler: Any,
        control: ControlLink,
        peers: PeerLink,
        settings: RunSettings,
        abort: AbortSignal,
        observer: TaskObserver | None = None,
    ):
        self.scheduler = scheduler
        self.control = control
        self.peers = peers
        self.settings = settings
        self.abort = abort
        self.observer = observer or TaskObserver()
        self.out_dir = output_dir(settings.workdir, settings.node_id, settings.task_id)
        self.checkpoints = CheckpointStore(self.out_dir / "checkpoints")
        self.watchdog = Watchdog(scheduler.calculation_timeout, self._local_timeout)
        self.role: Role | None = None
        self.phase = "WAITING_FOR_NODES"
        self.round = 0
        self.summary: dict[str, Any] = {"node_id": settings.node_id, "task_id": settings.task_id}

    # ---- failure plumbing -------------------------------------------------------------------
    def _where(self) -> str:
        where = f"{self.scheduler._role} '{self.settings.node_id}', phase {self.phase}"
        return where + (f" round {self.round}" if self.round else "")

    def _local_timeout(self, message: str) -> str:
        reason = f"{self._where()}: {message}"
        self.abort.set(reason)
        self._report_error(reason)
        return reason

    def _report_error(self, reason: str) -> None:
        try:
            self.control.report(Report(phase=self.phase, round=self.round, error=reason))
        except Exception as exc:  # the coordinator may be the thing that is gone
            log.warning("could not report the failure to the coordinator: %s", exc)

    # ---- the phase loop -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            self.summary.update(self._run())
            self.summary["status"] = "finished"
            return self.summary
        except TaskFailed as exc:
            self.observer.failed("task_failed")
            if not self.abort.is_set():  # found here (not a broadcast): tell everyone
                self.abort.set(f"{self._where()}: {exc.reason}")
                self._report_error(self.abort.reason)
            self.summary.update(status="failed", reason=self.abort.reason)
            raise TaskFailed(self.abort.reason) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, the watchdog, or SIGTERM (see the CLI)
            if not self.abort.is_set():
                self.observer.failed("interrupted")
            reason = self.abort.reason or f"{self._where()}: {exc or 'interrupted'}"
            self.abort.set(reason)
            self._report_error(reason)
            self.summary.update(status="failed", reason=reason)
            raise TaskFailed(reason) from None
        except ConfigError as exc:
            reason = f"{self._where()}: {exc}"
            self._fail_locally(reason, exc, "config_error")
        except Exception as exc:
            step = f"{self.watchdog.failed_in} raised " if self.watchdog.failed_in else ""
            reason = self.abort.reason or f"{self._where()}: {step}{_describe(exc)}"
            self._fail_locally(reason, exc, "local_error")
        finally:
            self.summary["seconds"] = round(time.monotonic() - started, 3)
            self.watchdog.close()
            write_json(self.out_dir / "report.json", self.summary)
        raise AssertionError("unreachable")

    def _fail_locally(self, reason: str, exc: BaseException, kind: str) -> None:
        if not self.abort.is_set():  # this node's own error, not a broadcast one
            self.observer.failed(kind)
        if not isinstance(exc, ConfigError | TaskFailed) and not self.abort.is_set():
            log.error("local error in %s", self._where(), exc_info=exc)
        self.abort.set(reason)
        self._report_error(reason)
        self.summary.update(status="failed", reason=reason)
        raise TaskFailed(reason) from None

    def _run(self) -> dict[str, Any]:
        sched = self.scheduler
        sched.id, sched.task_id = self.settings.node_id, self.settings.task_id
        sched._output_dir = self.out_dir
        self.role = make_role(sched, self.peers, self.abort, self.watchdog, self.settings.node_id)
        self.role.observer = self.observer
        # torch imports its compiler stack on the first optimizer built (several seconds on
        # a loaded machine): start-up cost of this process, not user work to bound.
        import torch._dynamo  # noqa: F401

        with self.watchdog.local("building the models"):
            self.role.build()
        self.role.save_checkpoint = self._save_in_round
        position = self.checkpoints.latest() if self.settings.recover else Position()
        participants = self.control.join(
            JoinInfo(
                node_id=self.settings.node_id,
                role=sched._role,
                feature_key=sched.feature_key,
                address=self.settings.advertise,
                checkpoint_round=position.rounds,
                checkpoint_batch=position.batches,
                recover=self.settings.recover,
                schedule_timeout=sched.schedule_timeout,
                calculation_timeout=sched.calculation_timeout,
                agreement={**self.settings.agreement, **self.role.agreement()},
            )
        )
        log.info(
            "joined task %s as %s (%s)",
            self.settings.task_id,
            self.settings.node_id,
            ", ".join(p.node_id for p in participants),
        )
        done: set[tuple[str, int]] = set()
        wait = max(sched.schedule_timeout, sched.calculation_timeout) + 30
        while True:
            cmd = self.control.next_command(timeout=wait)
            if (cmd.phase, cmd.round) in done:
                continue
            done.add((cmd.phase, cmd.round))
            self.phase, self.round = cmd.phase, cmd.round
            self.observer.phase(cmd.phase, cmd.round)
            if cmd.phase == "FAILED":
                self.abort.set(cmd.reason)
                raise TaskFailed(cmd.reason)
            if cmd.phase == "FINISHED":
                return self._finish()
            report = self._execute(cmd)
            if report is not None:
                self.control.report(report)

    def _execute(self, cmd: Command) -> Report | None:
        role = self.role
        assert role is not None
        if cmd.phase == "PSI":
            self.peers.connect(cmd.participants)
            role.set_participants(cmd.participants)
            with self.watchdog.local("load_local_ids"):
                ids = _check_ids(self.scheduler.load_local_ids())
            started = time.perf_counter()
            self.intersection = role.psi(ids)
            local = len(set(ids))
            self.observer.psi(time.perf_counter() - started, local, len(self.intersection))
            self.summary["local_ids"] = local
            self.summary["intersection_size"] = len(self.intersection)
            log.info("PSI done: %d common ids", len(self.intersection))
            return Report(phase="PSI", metrics={"intersection_size": len(self.intersection)})
        if cmd.phase == "SPLIT":
            with self.watchdog.local("split_dataset"):
                split = self.scheduler.split_dataset(set(self.intersection))
            train, test = _check_split(split)
            role.set_split(train, test)
            self.summary.update(train_size=len(train), test_size=len(test))
            return Report(
                phase="SPLIT",
                train_size=len(train),
                test_size=len(test),
                split_digest=split_digest(self.settings.task_id, train, test),
                **self._resume(Position(cmd.resume_round, cmd.resume_batch)),
            )
        if cmd.phase == "TRAIN":
            self.scheduler.current_round = cmd.round
            started = time.perf_counter()
            result = role.train_round(cmd.round)
            self.peers.flush()  # a pipelined round ends when its last message has arrived
            seconds = round(time.perf_counter() - started, 3)
            self.summary.setdefault("round_seconds", []).append(seconds)
            if role.label_leak:
                self.summary["label_leak"] = role.label_leak
            with self.watchdog.local("saving the checkpoint"):
                self.checkpoints.save(Position(cmd.round), {**role.state(), "round_result": result})
            self.summary["rounds"] = cmd.round
            return Report(phase="TRAIN", round=cmd.round, checkpoint_round=cmd.round, **result)
        if cmd.phase == "TEST":
            self.scheduler.current_round = cmd.round
            metrics = role.test(cmd.round)
            self.peers.flush()
            self.observer.test(metrics)
            history = self.summary.setdefault("test_history", [])
            if metrics:
                history.append({"round": cmd.round, **metrics})
            # A resume at the end of this round need not run its test again.
            self.checkpoints.save_progress({"tested_round": cmd.round, "test_history": history})
            if metrics:
                log.info(
                    "round %d test: %s",
                    cmd.round,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                )
            return Report(phase="TEST", round=cmd.round, metrics=metrics)
        return None  # WAITING_FOR_NODES: nothing to do

    def _resume(self, position: Position) -> dict[str, Any]:
        """Load the checkpoint the coordinator resumes every party from (none: a fresh start);
        newer ones belong to the run being redone. At the end of a round, the host tells the
        coordinator what that round's report said and whether its test is still to run."""
        role = self.role
        assert role is not None
        self.checkpoints.discard_after(position)
        if position == Position():
            return {}
        state = self.checkpoints.load(position)
        role.load_state(state)
        log.info("resuming from the checkpoint at %s", position)
        self.summary.update(resumed_from_round=position.rounds, rounds=position.rounds)
        progress = self.checkpoints.progress()
        history = [t for t in progress.get("test_history", []) if t["round"] <= position.rounds]
        self.summary["test_history"] = history
        if position.batches:
            self.summary["resumed_from_batch"] = position.batches
            role.resume = Resume(
                position.rounds + 1, position.batches, state["round_start_rng"], state["rng"]
            )
            return {}
        result = state.get("round_result") or {}
        tested = progress.get("tested_round", 0) >= position.rounds
        return {
            "finished": bool(result.get("finished")),
            "test_requested": bool(result.get("test_requested")) and not tested,
        }

    def _save_in_round(self, round_no: int, batches: int) -> None:
        """The role's callback after the batch every party checkpoints after."""
        assert self.role is not None
        state = {**self.role.state(), "round_start_rng": self.role.round_start_rng}
        what = f"saving the checkpoint after batch {batches} of round {round_no}"
        with self.watchdog.local(what):
            self.checkpoints.save(Position(round_no - 1, batches), state)

    def _finish(self) -> dict[str, Any]:
        assert self.role is not None
        self.role.save_final(self.out_dir)
        if self.role.label_leak:  # the last rounds' leak scores arrive after their TRAIN phase
            self.summary["label_leak"] = self.role.label_leak
        bundle = export_bundle(
            self.role, self.out_dir, self.settings.task_id, self.summary.get("rounds", 0)
        )
        self.peers.flush()  # the bundle's last messages, before the node closes its links
        self.summary["model_id"] = bundle.model_id
        history = self.summary.get("test_history") or []
        result: dict[str, Any] = {}
        if history:
            last = history[-1]
            result.update({f"final_test_{k}": v for k, v in last.items() if k != "round"})
        writer = self.scheduler._tb_writer
        if writer is not None:
            writer.close()
        log.info("task %s finished", self.settings.task_id)
        return result


def _check_ids(ids: Any) -> list[str]:
    if ids is None or isinstance(ids, str | bytes):
        raise ConfigError(
            f"load_local_ids() must return a list of str ids, got {type(ids).__name__}"
        )
    ids = list(ids)
    for i, item in enumerate(ids):
        if not isinstance(item, str):
            raise ConfigError(
                f"load_local_ids() returned a {type(item).__name__} at position {i}; "
                "ids must be str — convert them, e.g. [str(i) for i in ids]"
            )
    return ids


def _describe(exc: BaseException) -> str:
    """An exception for the failure reason every party sees. A KeyError's or IndexError's
    text is the key it looked up, often a sample id, so only its type goes out (the full
    error is in this node's log)."""
    if isinstance(exc, LookupError) and not isinstance(exc, NamedKeyError):
        return f"{type(exc).__name__} (the key is not shown to other parties; see this node's log)"
    return f"{type(exc).__name__}: {exc}"


def _check_split(split: Any) -> tuple[set, set]:
    if not (isinstance(split, tuple | list) and len(split) == 2):
        raise ConfigError("split_dataset() must return a (train_ids, test_ids) pair of sets")
    train, test = set(split[0]), set(split[1])
    if not train:
        raise ConfigError("split_dataset() returned an empty training set; check the PSI result")
    if train & test:
        raise ConfigError(
            f"split_dataset() put {len(train & test)} ids in both train and test; "
            "make them disjoint"
        )
    return train, test


__all__ = ["Participant", "RunSettings", "TaskRuntime"]
