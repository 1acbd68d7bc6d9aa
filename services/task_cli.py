"""`heteronn task create|get|list|cancel|delete --coordinator ADDR ...`: operate tasks by hand.

Prints each TaskInfo as JSON (`list`: every page, as one {"tasks": [...]}); a gRPC error
prints its status and message and exits 1.
Under mutual TLS, create, cancel and delete need an operator's certificate (a name in the
coordinator's `operators` setting); `--tls-*` options default to HETERONN_TASK_TLS_CA_FILE,
HETERONN_TASK_TLS_CERT_FILE and HETERONN_TASK_TLS_KEY_FILE so an operator sets them once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from heteronn.v1.coordinator_pb2 import ListTasksResponse
from services.client import CoordinatorClient, task_spec
from wire.config_file import settings_error
from wire.tls import TlsSettings

_COMMANDS = ("create", "get", "list", "cancel", "delete")


def _subcommand_first(argv: list[str]) -> list[str]:
    """Connection options may come before the subcommand; argparse wants them after it."""
    for i, arg in enumerate(argv):
        if arg in _COMMANDS:
            return [arg, *argv[:i], *argv[i + 1 :]]
    return argv


def _defaults(env: Mapping[str, str]) -> dict[str, object]:
    """Connection defaults; TLS files from the environment (an operator's shell or a Job)."""

    def path(name: str) -> Path | None:
        value = env.get(f"HETERONN_TASK_{name}")
        return Path(value) if value else None

    return {
        "coordinator": env.get("HETERONN_TASK_COORDINATOR") or "127.0.0.1:50051",
        "tls_ca": path("TLS_CA_FILE"),
        "tls_cert": path("TLS_CERT_FILE"),
        "tls_key": path("TLS_KEY_FILE"),
        "server_name": env.get("HETERONN_TASK_SERVER_NAME") or "coordinator",
        "timeout": 10.0,
    }


def _connection_options(defaults: dict[str, object]) -> argparse.ArgumentParser:
    """Accepted before or after the subcommand (`task --coordinator X create` or
    `task create --coordinator X`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--coordinator", help="coordinator host:port (default 127.0.0.1:50051)")
    common.add_argument("--tls-ca", type=Path, help="CA bundle (mutual TLS)")
    common.add_argument(
        "--tls-cert",
        type=Path,
        help="client certificate (mutual TLS; an operator's for create/cancel)",
    )
    common.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    common.add_argument(
        "--server-name",
        help="name expected in the coordinator's certificate, whatever address is dialled "
        "(default: coordinator, as nodes expect)",
    )
    common.add_argument("--timeout", type=float, help="RPC deadline in seconds (default 10)")
    common.set_defaults(**defaults)
    return common


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = _defaults(env)
    common = _connection_options(defaults)
    parser = argparse.ArgumentParser(prog="heteronn task", description=__doc__)
    parser.set_defaults(**defaults)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser(
        "create", parents=[common], help="create a task (or a new attempt with --recover)"
    )
    create.add_argument("--task-id", required=True)
    create.add_argument("--participants", required=True, help="comma-separated node ids")
    create.add_argument("--schedule-timeout", type=float, default=60.0, help="seconds")
    create.add_argument("--calculation-timeout", type=float, default=300.0, help="seconds")
    create.add_argument("--mode", default="plain", choices=["plain", "secure"])
    create.add_argument(
        "--recover",
        action="store_true",
        default=env.get("HETERONN_TASK_RECOVER", "").lower() in ("1", "true", "yes"),
        help="a new attempt of a FAILED or FINISHED task, resuming from checkpoints "
        "(default: HETERONN_TASK_RECOVER)",
    )
    get = sub.add_parser("get", parents=[common], help="show one task")
    get.add_argument("--task-id", required=True)
    sub.add_parser("list", parents=[common], help="show every task")
    cancel = sub.add_parser(
        "cancel", parents=[common], help="fail a task on purpose; every node stops"
    )
    cancel.add_argument("--task-id", required=True)
    cancel.add_argument("--reason", default="")
    delete = sub.add_parser(
        "delete", parents=[common], help="forget an ended task (its id becomes free)"
    )
    delete.add_argument("--task-id", required=True)
    return parser


def _show(message: object) -> None:
    print(
        json.dumps(
            MessageToDict(message, preserving_proto_field_name=True),
            indent=2,  # type: ignore[arg-type]
        )
    )


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one subcommand; exit 0 on success, 1 on a gRPC error, 2 on bad TLS options."""
    parser = _parser(os.environ if env is None else env)
    args = parser.parse_args(_subcommand_first(sys.argv[1:] if argv is None else argv))
    try:
        tls = TlsSettings(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    except ValueError as err:
        print(f"heteronn task {args.command}: {settings_error(err)}", file=sys.stderr)
        return 2
    with CoordinatorClient(
        args.coordinator, tls, server_name=args.server_name, timeout=args.timeout
    ) as client:
        try:
            if args.command == "create":
                spec = task_spec(
                    args.task_id,
                    [p.strip() for p in args.participants.split(",") if p.strip()],
                    schedule_timeout_s=args.schedule_timeout,
                    calculation_timeout_s=args.calculation_timeout,
                    recover=args.recover,
                    mode=args.mode,
                )
                _show(client.create_task(spec))
            elif args.command == "get":
                _show(client.get_task(args.task_id))
            elif args.command == "list":
                _show(ListTasksResponse(tasks=client.list_tasks()))
            elif args.command == "cancel":
                _show(client.cancel_task(args.task_id, args.reason))
            else:
                _show(client.delete_task(args.task_id))
        except grpc.RpcError as err:
            print(
                f"heteronn task {args.command}: {err.code().name}: {err.details()}", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
