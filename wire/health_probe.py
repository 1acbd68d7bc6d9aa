"""A grpc.health.v1 client for container health checks and Kubernetes exec probes.

Kubernetes' built-in gRPC probe and plain TCP checks cannot speak mutual TLS, so the image's
HEALTHCHECK and the chart's probes run this instead, with the process's own certificate:
`heteronn health [ADDRESS]` (or `python -m wire.health_probe`). Exit 0 when SERVING, else 1
with one line on stderr saying why.

Defaults come from the environment the node or coordinator already has: the port of
HETERONN_NODE_LISTEN / HETERONN_COORDINATOR_LISTEN and the matching TLS_*_FILE variables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wire.grpc_factory import open_channel
from wire.tls import TlsSettings

_PREFIXES = ("HETERONN_NODE_", "HETERONN_SERVE_", "HETERONN_COORDINATOR_")
#: Default port and the variable naming the process's own node id, per service.
_OWN = {
    "HETERONN_NODE_": ("50061", "HETERONN_NODE_NODE_ID"),
    "HETERONN_SERVE_": ("50071", "HETERONN_SERVE_NODE_ID"),
}


def _env_defaults(env: Mapping[str, str]) -> dict[str, str | None]:
    """Address, TLS files and the name to expect in the server's certificate, from whichever
    service's variables are set. The name is the process's own node id ("coordinator" for
    the coordinator): production certificates name the node, not 127.0.0.1."""
    for prefix in _PREFIXES:
        listen = env.get(prefix + "LISTEN")
        ca = env.get(prefix + "TLS_CA_FILE")
        if listen or ca:
            default_port, own_var = _OWN.get(prefix, ("50051", ""))
            port = listen.rsplit(":", 1)[-1] if listen else default_port
            own_name = env.get(own_var) if own_var else "coordinator"
            return {
                "address": f"127.0.0.1:{port}",
                "ca": ca,
                "cert": env.get(prefix + "TLS_CERT_FILE"),
                "key": env.get(prefix + "TLS_KEY_FILE"),
                "server_name": env.get("HETERONN_HEALTH_SERVER_NAME") or own_name,
            }
    return {"address": "127.0.0.1:50061", "ca": None, "cert": None, "key": None,
            "server_name": env.get("HETERONN_HEALTH_SERVER_NAME")}


def check(
    address: str,
    tls: TlsSettings | None = None,
    service: str = "",
    timeout: float = 5.0,
    server_name: str | None = None,
) -> str:
    """The serving status name of `service` at `address` (raises grpc.RpcError if unreachable)."""
    channel = open_channel(address, tls=tls, server_name=server_name)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    finally:
        channel.close()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(
    address: str,
    tls: TlsSettings | None,
    server_name: str | None,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    """Poll until `address` is SERVING (True), `alive()` turns false or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if check(address, tls, timeout=2.0, server_name=server_name) == "SERVING":
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    return False


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    defaults = _env_defaults(env)
    parser = argparse.ArgumentParser(prog="heteronn health", description=__doc__.splitlines()[0])
    default_address = env.get("HETERONN_HEALTH_ADDRESS") or defaults["address"]
    parser.add_argument("address", nargs="?", help=f"HOST:PORT (default {default_address}: "
                        "this process's own port)")
    parser.add_argument("--address", dest="address_option", help="the same as ADDRESS")
    parser.add_argument("--service", default="", help="service name; '' = the whole process")
    parser.add_argument("--tls-ca", default=defaults["ca"])
    parser.add_argument("--tls-cert", default=defaults["cert"])
    parser.add_argument("--tls-key", default=defaults["key"])
    parser.add_argument("--server-name", default=defaults["server_name"],
                        help="name expected in the server certificate (default: own node id)")
    parser.add_argument("--timeout", type=float, default=15.0, help="RPC deadline, seconds")
    args = parser.parse_args(argv)
    address = args.address or args.address_option or default_address
    tls = None
    try:
        if args.tls_ca:
            tls = TlsSettings(ca_file=Path(args.tls_ca),
                              cert_file=Path(args.tls_cert) if args.tls_cert else None,
                              key_file=Path(args.tls_key) if args.tls_key else None)
        status = check(address, tls, args.service, args.timeout, args.server_name)
    except grpc.RpcError as error:
        return _fail(f"{address}: {error.code().name}: {error.details()}")
    except ValueError as error:  # incomplete or missing TLS files
        return _fail(f"{address}: bad TLS options: {error}")
    if status != "SERVING":
        return _fail(f"{address}: {status}")
    print(f"{address}: {status}")
    return 0


def _fail(message: str) -> int:
    """One line on stderr (container runtimes keep only the start of probe output)."""
    print(" ".join(message.split()), file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
