"""One party's end of SecretFlow's PSI (`spu` 0.9.5, `psi_execute`), as a worker process.

Runs under the PSI engine's own interpreter (`.venv-psi`, Python 3.10-3.11, numpy < 2), so it
imports nothing but the standard library and spu's two native modules; `spu/__init__` (which
needs jax) is bypassed, and the engine venv installs spu without its ML dependencies.

    python -I spu_worker.py CONFIG.json

CONFIG names: rank (0 host, 1 collaborator), parties [[id, host:port], ...], link_id,
protocol ("rr22" | "ecdh"), input/output CSV paths, receiver_rank, broadcast, bucket_size,
checkpoint dir ("" for none), tls {cert, key, peer_cert} or null, timeouts in ms, and
optionally key_column (default "k").
The link is mutual TLS: each end presents its own certificate and trusts only the peer's.
Prints one JSON line: {"intersection": n, "seconds": s} or {"error": "..."} (exit 1).
Writes `linked` in its working directory once both ends' link is up; spu logs to spu.log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import types


def _spu_modules() -> tuple[types.ModuleType, types.ModuleType]:
    spec = importlib.util.find_spec("spu")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PSI engine's interpreter has no `spu` package")
    package = types.ModuleType("spu")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["spu"] = package
    import spu.libpsi as libpsi
    import spu.libspu as libspu

    return libspu, libpsi


def _exit_with_parent() -> None:
    """End this worker when the node that started it dies (killed, crashed): an orphaned
    worker would hold its port and keep its peer waiting. Polled, because the kernel's
    parent-death signal follows the starting thread, not the process."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run(config: dict) -> dict:
    _exit_with_parent()
    libspu, libpsi = _spu_modules()
    log = libspu.logging
    options = log.LogOptions()
    options.log_level = log.LogLevel.WARN
    log.setup_logging(options)

    desc = libspu.link.Desc()
    desc.id = config["link_id"]
    for party_id, address in config["parties"]:
        desc.add_party(party_id, address)
    desc.connect_retry_times = int(config["connect_timeout_ms"] // 200) + 1
    desc.connect_retry_interval_ms = 200
    desc.recv_timeout_ms = int(config["recv_timeout_ms"])
    desc.http_timeout_ms = int(config["recv_timeout_ms"])
    desc.throttle_window_size = 64
    tls = config.get("tls")
    if tls:
        desc.enable_ssl = True
        for opts in (desc.client_ssl_opts, desc.server_ssl_opts):
            opts.cert.certificate_path = tls["cert"]
            opts.cert.private_key_path = tls["key"]
            opts.verify.ca_file_path = tls["peer_cert"]
            opts.verify.verify_depth = 1
    started = time.perf_counter()
    lctx = libspu.link.create_brpc(desc, int(config["rank"]))
    with open("linked", "w") as marker:  # in the run's folder: the link is up
        marker.write("1")

    protocols = {"rr22": libpsi.PsiProtocol.PROTOCOL_RR22, "ecdh": libpsi.PsiProtocol.PROTOCOL_ECDH}
    protocol_conf = libpsi.PsiProtocolConfig(
        protocol=protocols[config["protocol"]],
        receiver_rank=int(config["receiver_rank"]),
        bucket_size=int(config["bucket_size"]),
        broadcast_result=bool(config["broadcast"]),
    )
    if config["protocol"] == "ecdh":
        protocol_conf.ecdh_params = libpsi.EcdhParams(curve=libpsi.EllipticCurveType.CURVE_25519)
    checkpoint = config.get("checkpoint") or ""
    execute = libpsi.PsiExecuteConfig(
        protocol_conf=protocol_conf,
        input_params=libpsi.InputParams(
            type=libpsi.SourceType.SOURCE_TYPE_FILE_CSV,
            path=config["input"],
            selected_keys=[config.get("key_column", "k")],
            keys_unique=True,
        ),
        output_params=libpsi.OutputParams(
            type=libpsi.SourceType.SOURCE_TYPE_FILE_CSV,
            path=config["output"],
            disable_alignment=True,
        ),
        checkpoint_conf=libpsi.CheckpointConfig(enable=bool(checkpoint), path=checkpoint),
    )
    report = libpsi.psi_execute(execute, lctx)
    result = {
        "intersection": int(report.intersection_count),
        "seconds": round(time.perf_counter() - started, 3),
    }
    # Out before anything is torn down: the engine keeps a printed result even if the link's
    # teardown then fails (spu: 'SendThread error bad_weak_ptr', exit status 255).
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    if len(sys.argv) != 2:
        print(json.dumps({"error": "usage: spu_worker.py CONFIG.json"}), flush=True)
        return 2
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    try:
        run(config)  # prints its result as soon as spu is done
    except Exception as exc:  # spu raises RuntimeError with its C++ message
        text = " ".join(str(exc).split())
        print(json.dumps({"error": f"{type(exc).__name__}: {text[:2000]}"}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # No interpreter teardown: spu's link threads may still be closing, and native
    # destructors racing them must not turn a finished run into a crash.
    os._exit(code)
