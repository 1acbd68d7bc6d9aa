"""Per-step timings and wire bytes of the CKKS projection protocol (one collaborator).

Default shape is the MNIST demo's: batch 128, 20 -> 10. Bytes are those of the serialized
`heteronn.v1.Payload` of each message, i.e. what the transport sends (before chunking). Steps
run one after the other in one process (no overlap between the parties, as a lower bound on
what each costs); work made ahead on the worker threads is included where it is waited for.
Last stdout line: {"bench": "he_steps", ...}, with the batch total, bytes per batch and the
bits of every mask and flood (`party_node.secure.margins`).

    python -m bench.he_steps [--batch 128 --in-dim 20 --out-dim 10 --batches 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from heteronn.v1 import common_pb2
from party_node.secure import (
    OwnKeys,
    PeerKeys,
    SecureCollaboratorLayer,
    SecureHostLayer,
    SecureParams,
)
from party_node.secure.margins import margins
from wire.tensor_codec import tensor_from_proto, tensor_to_proto


def wire_bytes(msg: dict) -> tuple[dict, int]:
    """Round-trip through a serialized Payload; return the decoded dict and its size."""
    payload = common_pb2.Payload(header=common_pb2.Header(task_id="bench", kind="secure"))
    for name, value in msg.items():
        if isinstance(value, bytes):
            payload.blobs[name] = value
        else:
            payload.tensors[name].CopyFrom(tensor_to_proto(value))
    data = payload.SerializeToString()
    back = common_pb2.Payload.FromString(data)
    out: dict = {n: bytes(b) for n, b in back.blobs.items()}
    out.update({n: tensor_from_proto(t) for n, t in back.tensors.items()})
    return out, len(data)


def timed(times: dict[str, list[float]], name: str, fn: Callable, *args):
    start = time.perf_counter()
    result = fn(*args)
    times.setdefault(name, []).append(time.perf_counter() - start)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--in-dim", type=int, default=20)
    ap.add_argument("--out-dim", type=int, default=10)
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    params = SecureParams()
    din, dout, rows = args.in_dim, args.out_dim, args.batch

    t0 = time.perf_counter()
    coll_keys = OwnKeys(params.ckks, SecureCollaboratorLayer.key_steps(din, dout, params))
    host_keys = OwnKeys(params.ckks, SecureHostLayer.key_steps(din, dout, params))
    keygen_s = time.perf_counter() - t0
    coll_pub, coll_key_bytes = wire_bytes(coll_keys.public_blobs())
    host_pub, host_key_bytes = wire_bytes(host_keys.public_blobs())
    host = SecureHostLayer("c", din, dout, 0.01, 0.9, host_keys, PeerKeys(params.ckks, coll_pub))
    coll = SecureCollaboratorLayer(
        "c", din, dout, 0.01, 0.9, coll_keys, PeerKeys(params.ckks, host_pub)
    )
    m, init_up = wire_bytes(host.init_request())
    m, init_down = wire_bytes(coll.init_reply(m))
    host.init_finish(m)
    m, _ = wire_bytes(host.share_message())
    coll.set_host_share(m)

    times: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    totals: list[float] = []
    for _ in range(args.batches):
        x = torch.randn(rows, din)
        start = time.perf_counter()
        fwd, sizes["fwd"] = wire_bytes(timed(times, "c_forward_xw", coll.forward, x))
        z = timed(times, "h_decrypt_z", host.forward, fwd)
        enc_x, sizes["enc_x"] = wire_bytes(timed(times, "c_encrypt_x", coll.encrypt_features))
        delta = torch.randn_like(z) * 1e-3
        grad, sizes["bwd_grad"] = wire_bytes(
            timed(times, "h_backward_dwt", host.backward, delta)
        )
        weight, sizes["bwd_weight"] = wire_bytes(
            timed(times, "h_weight_gradient", host.weight_gradient, enc_x)
        )
        timed(times, "c_decrypt_dx", coll.finish_backward, grad)
        timed(times, "c_step_share", coll.apply_weight_gradient, weight)
        totals.append(time.perf_counter() - start)

    test_rows = 2000
    x = torch.randn(test_rows, din)
    start = time.perf_counter()
    m, test_bytes = wire_bytes(coll.forward(x, train=False))
    host.forward(m, train=False)
    test_s = time.perf_counter() - start

    steps_ms = {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}
    for k, v in steps_ms.items():
        print(f"{k:32s} {v:8.1f} ms")
    for k, v in sizes.items():
        print(f"{k:32s} {v / 1e6:8.3f} MB")
    total = sum(sizes.values())
    print(f"{'batch total':32s} {1000 * statistics.median(totals):8.1f} ms, {total / 1e6:.3f} MB")
    result = {
        "bench": "he_steps",
        "batch": rows,
        "in_dim": din,
        "out_dim": dout,
        "steps_ms": steps_ms,
        "batch_total_ms": round(1000 * statistics.median(totals), 1),
        "bytes_per_batch": total,
        "bytes_per_message": sizes,
        "public_key_bytes": {"collaborator": coll_key_bytes, "host": host_key_bytes},
        "initial_share_bytes": init_up + init_down,
        "keygen_s": round(keygen_s, 2),
        "margins_bits": margins(params, din, dout, 0.01, 0.9),
        "test_forward_2000_rows_s": round(test_s, 2),
        "test_forward_2000_rows_bytes": test_bytes,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
