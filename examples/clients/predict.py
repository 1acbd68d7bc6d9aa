"""Calls a heteronn host's PredictionService from Python with only the .proto files: the
stubs are generated from proto/heteronn/v1/ (docs/inference.md, "Calling Predict").

    python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. \\
        proto/heteronn/v1/common.proto proto/heteronn/v1/serving.proto
    python predict.py --address HOST:PORT [--ca ca.crt --cert client.crt --key client.key \\
        --server-name NODE_ID] ID...
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from heteronn.v1 import serving_pb2, serving_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--server-name", help="the host's node id, as in its certificate")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("ids", nargs="+")
    args = parser.parse_args()
    if args.ca:
        with open(args.ca, "rb") as ca, open(args.key, "rb") as key, open(args.cert, "rb") as crt:
            creds = grpc.ssl_channel_credentials(ca.read(), key.read(), crt.read())
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.address, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    stub = serving_pb2_grpc.PredictionServiceStub(channel)
    try:
        reply = stub.Predict(serving_pb2.PredictRequest(ids=args.ids), timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"Predict failed: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    for p in reply.predictions:
        print(json.dumps({
            "id": p.id,
            "status": serving_pb2.PredictionStatus.Name(p.status),
            "predicted_class": p.predicted_class,
            "scores": list(p.scores),
            "missing_at": list(p.missing_at),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
