"""`heteronn task create|get|list|cancel --coordinator ADDR ...`: operate tasks by hand.

Prints each TaskInfo as JSON; a gRPC error prints its status and message and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from heteronn.v1 import coordinator_pb2, coordinator_pb2_grpc
from wire.grpc_factory import open_channel
from wire.tls import TlsSettings

_COMMANDS = ("create", "get", "list", "cancel")


def _subcommand_first(argv: list[str]) -> list[str]:
    """Connection options may come before the subcommand; argparse wants them after it."""
    for i, arg in enumerate(argv):
        if arg in _COMMANDS:
            return [arg, *argv[:i], *argv[i + 1 :]]
    return argv


def _connection_options() -> argparse.ArgumentParser:
    """Accepted before or after the subcommand (`task --coordinator X create` or
    `task create --coordinator X`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--coordinator", default="127.0.0.1:50051", help="coordinator host:port")
    common.add_argument("--tls-ca", type=Path, help="CA bundle (mutual TLS)")
    common.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    common.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    common.add_argument("--timeout", type=float, default=10.0, help="RPC deadline in seconds")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = argparse.ArgumentParser(prog="heteronn task", description=__doc__)
    parser.set_defaults(
        coordinator="127.0.0.1:50051", tls_ca=None, tls_cert=None, tls_key=None, timeout=10.0
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser(
        "create", parents=[common], help="create a task (or a new attempt with --recover)"
    )
    create.add_argument("--task-id", required=True)
    create.add_argument("--participants", required=True, help="comma-separated node ids")
    create.add_argument("--schedule-timeout", type=float, default=60.0, help="seconds")
    create.add_argument("--calculation-timeout", type=float, default=300.0, help="seconds")
    create.add_argument("--mode", default="plain", choices=["plain", "secure"])
    create.add_argument("--recover", action="store_true", help="resume a FAILED task")
    get = sub.add_parser("get", parents=[common], help="show one task")
    get.add_argument("--task-id", required=True)
    sub.add_parser("list", parents=[common], help="show every task")
    cancel = sub.add_parser(
        "cancel", parents=[common], help="fail a task on purpose; every node stops"
    )
    cancel.add_argument("--task-id", required=True)
    cancel.add_argument("--reason", default="")
    return parser


def _show(message: object) -> None:
    print(
        json.dumps(
            MessageToDict(message, preserving_proto_field_name=True),
            indent=2,  # type: ignore[arg-type]
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_subcommand_first(sys.argv[1:] if argv is None else argv))
    tls = TlsSettings(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    with open_channel(args.coordinator, tls=tls) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        t = args.timeout
        try:
            if args.command == "create":
                spec = coordinator_pb2.TaskSpec(
                    task_id=args.task_id,
                    participants=[p.strip() for p in args.participants.split(",") if p.strip()],
                    schedule_timeout_s=args.schedule_timeout,
                    calculation_timeout_s=args.calculation_timeout,
                    recover=args.recover,
                    mode=args.mode,
                )
                _show(stub.CreateTask(coordinator_pb2.CreateTaskRequest(spec=spec), timeout=t))
            elif args.command == "get":
                _show(stub.GetTask(coordinator_pb2.GetTaskRequest(task_id=args.task_id), timeout=t))
            elif args.command == "list":
                _show(stub.ListTasks(coordinator_pb2.ListTasksRequest(), timeout=t))
            else:
                req = coordinator_pb2.CancelTaskRequest(task_id=args.task_id, reason=args.reason)
                _show(stub.CancelTask(req, timeout=t))
        except grpc.RpcError as err:
            print(
                f"heteronn task {args.command}: {err.code().name}: {err.details()}", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
