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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heteronn task", description=__doc__)
    parser.add_argument("--coordinator", default="127.0.0.1:50051", help="coordinator host:port")
    parser.add_argument("--tls-ca", type=Path, help="CA bundle (mutual TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=10.0, help="RPC deadline in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a task (or a new attempt with --recover)")
    create.add_argument("--task-id", required=True)
    create.add_argument("--participants", required=True, help="comma-separated node ids")
    create.add_argument("--schedule-timeout", type=float, default=60.0, help="seconds")
    create.add_argument("--calculation-timeout", type=float, default=300.0, help="seconds")
    create.add_argument("--mode", default="plain", choices=["plain", "secure"])
    create.add_argument("--recover", action="store_true", help="resume a FAILED task")
    get = sub.add_parser("get", help="show one task")
    get.add_argument("--task-id", required=True)
    sub.add_parser("list", help="show every task")
    cancel = sub.add_parser("cancel", help="fail a task on purpose; every node stops")
    cancel.add_argument("--task-id", required=True)
    cancel.add_argument("--reason", default="")
    return parser


def _show(message: object) -> None:
    print(json.dumps(
        MessageToDict(message, preserving_proto_field_name=True), indent=2  # type: ignore[arg-type]
    ))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
            print(f"heteronn task {args.command}: {err.code().name}: {err.details()}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
