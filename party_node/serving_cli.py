"""`heteronn serve`, `heteronn predict` and `heteronn audit` (docs/inference.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from party_node.cli import load_factory
from party_node.errors import ConfigError, NodeError, TaskFailed
from wire.config_file import settings_error


def _serving_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", required=True, help="package.module:factory")
    parser.add_argument("--config", type=Path, help="TOML file with serving settings")
    parser.add_argument("--node-id")
    parser.add_argument("--bundle", type=Path, help="this party's model/ folder")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--collaborator",
        action="append",
        default=[],
        metavar="NODE_ID=HOST:PORT",
        help="host: a collaborator's serving node (repeat for each)",
    )
    parser.add_argument(
        "--plaintext", dest="tls_plaintext", action="store_true", default=None,
        help="run without TLS (trusted networks and local demos only)",
    )


def _load(args: argparse.Namespace, skip: set[str]) -> tuple[Any, Any]:
    from party_node.settings import ServingSettings

    ignored = {"scheduler", "config", "collaborator", *skip}
    overrides = {k: v for k, v in vars(args).items() if k not in ignored}
    if args.collaborator:
        pairs = [c.partition("=") for c in args.collaborator]
        if any(not sep or not name or not addr for name, sep, addr in pairs):
            raise ConfigError("--collaborator takes NODE_ID=HOST:PORT")
        overrides["collaborators"] = {name: addr for name, _, addr in pairs}
    settings = ServingSettings.load(args.config, **overrides)
    scheduler = load_factory(args.scheduler)(**settings.scheduler_args)
    return settings, scheduler


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="heteronn serve", description="serve a trained model")
    _serving_arguments(parser)
    parser.add_argument("--listen")
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args(argv)
    from party_node.app import run_serving

    try:
        settings, scheduler = _load(args, set())
        run_serving(scheduler, settings)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"heteronn serve: configuration error: {settings_error(exc)}", file=sys.stderr)
        return 2
    return 0


def predict_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="heteronn predict",
        description="batch prediction at the host, against the collaborators' serving nodes",
    )
    _serving_arguments(parser)
    parser.add_argument("--ids", type=Path, help="file of ids, one per line (default: the "
                        "host's load_local_ids())")
    parser.add_argument("--output", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument("--batch-rows", type=int, default=8192, help="ids per request")
    args = parser.parse_args(argv)
    from party_node.app import run_batch_predict

    try:
        settings, scheduler = _load(args, {"ids", "output", "batch_rows"})
        ids = None
        if args.ids is not None:
            ids = [line.strip() for line in args.ids.read_text().splitlines() if line.strip()]
        report = run_batch_predict(
            scheduler, settings, args.output, ids=ids, batch_rows=args.batch_rows
        )
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"heteronn predict: configuration error: {settings_error(exc)}", file=sys.stderr)
        return 2
    except (TaskFailed, NodeError) as exc:
        print(f"heteronn predict: failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict()))
    return 0


def audit_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="heteronn audit",
        description="which calls asked a collaborator about these ids (needs the audit key)",
    )
    parser.add_argument("--log", type=Path, required=True, help="the audit log (audit.jsonl)")
    parser.add_argument("--key", type=Path, help="its key (default: beside the log, .key)")
    parser.add_argument("ids", nargs="+")
    args = parser.parse_args(argv)
    from party_node.serving.audit import lookup

    try:
        for item, entry in lookup(args.log, args.key or args.log.with_suffix(".key"), args.ids):
            print(json.dumps({"id": item, **entry}))
    except (FileNotFoundError, ValueError) as exc:
        print(f"heteronn audit: {exc}", file=sys.stderr)
        return 2
    return 0
