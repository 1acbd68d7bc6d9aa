"""`heteronn` command: `node` runs a party, `coordinator` the coordinator service, `task`
talks to a coordinator, `health` checks a process's gRPC health (container probes), `serve`
serves a trained model, `predict` runs a batch prediction, `audit` searches a collaborator's
audit log. Exit codes: 0 finished/serving, 1 task failed/not serving, 2 bad configuration."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from typing import Any

from party_node.errors import ConfigError, TaskFailed
from party_node.log import logger
from wire.config_file import settings_error


def load_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--scheduler must look like package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import scheduler module {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no {attr!r}") from None


def node_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="heteronn node", description="run one party node")
    parser.add_argument("--scheduler", required=True, help="package.module:factory")
    parser.add_argument(
        "--config", type=Path,
        help="TOML file with node settings (default: the file named by HETERONN_NODE_CONFIG)",
    )
    parser.add_argument("--node-id")
    parser.add_argument("--task-id")
    parser.add_argument("--coordinator")
    parser.add_argument("--listen")
    parser.add_argument("--advertise")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--recover", action="store_true", default=None)
    parser.add_argument(
        "--plaintext",
        dest="tls_plaintext",
        action="store_true",
        default=None,
        help="run without TLS (trusted networks and local demos only)",
    )
    args = parser.parse_args(argv)
    from party_node.app import run_node
    from party_node.settings import NodeSettings

    try:
        overrides = {k: v for k, v in vars(args).items() if k not in ("scheduler", "config")}
        settings = NodeSettings.load(args.config, **overrides)
        scheduler = load_factory(args.scheduler)(**settings.scheduler_args)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"heteronn node: configuration error: {settings_error(exc)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        report = run_node(scheduler, settings)
    except TaskFailed as exc:
        print(f"heteronn node: task {settings.task_id} failed: {exc.reason}", file=sys.stderr)
        return 1
    logger.info("report: %s", report)
    return 0


class Stopped(KeyboardInterrupt):
    """The process was told to stop (SIGTERM): the task fails now, at every party, instead
    of waiting out a timeout."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise Stopped("stopped by SIGTERM (the node was shut down)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"node", "coordinator", "task", "health", "serve", "predict", "audit"}
    if not argv or argv[0] not in commands:
        print(
            "usage: heteronn {node,coordinator,task,health,serve,predict,audit} ...",
            file=sys.stderr,
        )
        return 2
    command, rest = argv[0], argv[1:]
    if command == "node":
        return node_main(rest)
    if command in ("serve", "predict", "audit"):
        from party_node.serving_cli import audit_main, predict_main, serve_main

        return {"serve": serve_main, "predict": predict_main, "audit": audit_main}[command](rest)
    if command == "coordinator":
        from services.server import main as coordinator_main

        return coordinator_main(rest)
    if command == "health":
        from wire.health_probe import main as health_main

        return health_main(rest)
    from services.task_cli import main as task_main

    return task_main(rest)


if __name__ == "__main__":
    sys.exit(main())
