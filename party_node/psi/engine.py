"""SecretFlow's PSI (`spu` 0.9.5: RR22, or ECDH on Curve25519) as this party's PSI engine,
run as a worker process in its own interpreter (`spu_worker.py`). No transport here: the
gRPC handshake that tells each party the other's link end lives in `engine_rpc.py`, the
input and output files in `engine_files.py`.

The engine's link is mutual TLS with a fresh self-signed certificate per run for each end;
each worker trusts exactly the certificate the other party sent over our authenticated
Psi RPC, so only that party can complete the link's handshake.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from party_node.psi.engine_files import EngineInput, read_rows
from party_node.psi.frames import PsiError

_log = logging.getLogger("heteronn.psi")

#: Which of spu's protocols a run uses; both parties must name the same one.
PROTOCOLS = ("rr22", "ecdh")
#: Ids per bucket of spu's bucketed PSI: bounds the engine's memory, and is the unit of work
#: that a resumed run does not redo.
BUCKET_SIZE = 1 << 20
_WORKER = Path(__file__).with_name("spu_worker.py")
_POLL_S = 0.1
#: How long a worker may take to exit after its PSI has been cancelled.
_KILL_GRACE_S = 5.0


class Cancellation(Protocol):
    def is_set(self) -> bool: ...


class ResumeFailed(PsiError):
    """A run continued from an interrupted attempt's checkpoint failed in spu: the parties
    run it once more afresh (`engine_rpc.run_host_engine_psi`, `engine_session`)."""


class EngineUnavailable(PsiError):
    """The PSI engine's interpreter is missing; the message says how to install it."""


def engine_python() -> Path:
    """The interpreter of the PSI engine's venv: HETERONN_PSI_ENGINE_PYTHON, else the
    project's `.venv-psi` (created by `make install`)."""
    configured = os.environ.get("HETERONN_PSI_ENGINE_PYTHON")
    if configured:
        path = Path(configured)
    else:
        path = Path(__file__).resolve().parents[2] / ".venv-psi" / "bin" / "python"
    if not path.exists():
        raise EngineUnavailable(
            f"the PSI engine's interpreter {path} does not exist: run `make install` (it "
            "creates .venv-psi with spu), or set HETERONN_PSI_ENGINE_PYTHON to a Python 3.10-3.11 "
            "with spu==0.9.5, or set psi_engine = 'ecdh' on every party"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class LinkEnd:
    """One party's end of the engine link, as told to the other party."""

    address: str
    certificate: bytes


class EphemeralIdentity:
    """A fresh P-256 key and self-signed certificate for one engine run, in `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"heteronn-psi {name}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.key_file = folder / "link.key"
        self.cert_file = folder / "link.crt"
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        self.certificate = cert.public_bytes(serialization.Encoding.PEM)
        self.cert_file.write_bytes(self.certificate)

    def discard(self) -> None:
        self.key_file.unlink(missing_ok=True)


def check_certificate(pem: bytes, peer: str) -> bytes:
    """The peer's link certificate must parse as one PEM certificate (bounded size)."""
    if len(pem) > 16384:
        raise PsiError(f"{peer} sent a {len(pem)}-byte link certificate; at most 16384 expected")
    try:
        x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PsiError(f"{peer} sent a link certificate that does not parse: {exc}") from None
    return pem


@dataclass(frozen=True)
class RunSpec:
    """Everything one engine run needs besides the ids."""

    protocol: str
    rank: int  # 0: the host's end, 1: the collaborator's
    link_id: str
    me: str
    peer: str
    listen: str  # where this worker listens, e.g. 0.0.0.0:PORT
    peer_end: LinkEnd
    receiver_rank: int = 0
    broadcast: bool = True
    bucket_size: int = BUCKET_SIZE
    timeout: float = 3600.0
    connect_timeout: float = 60.0


class EngineRun:
    """One engine run with one peer in `folder`: worker process, checkpoint, output rows.

    The folder survives a crash: a run started again on the same folder hands spu its
    checkpoint, and spu continues after the last bucket both ends finished."""

    def __init__(self, folder: Path, source: EngineInput, name: str, recover: bool) -> None:
        if not recover:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.python = engine_python()
        self.folder = folder
        self.input = source
        self.output = folder / "output.csv"
        self.checkpoint = folder / "checkpoint"
        self._process: subprocess.Popen[bytes] | None = None
        self._identity = EphemeralIdentity(folder, name)
        self._log = folder / "worker.log"
        self._out = folder / "worker.out"
        self._spu_log = folder / "spu.log"
        self._linked = folder / "linked"
        self._done = folder / "done.json"
        self.resumed = False

    @property
    def certificate(self) -> bytes:
        return self._identity.certificate

    @property
    def finished(self) -> bool:
        """Whether a previous attempt of this run finished here (its output is kept)."""
        return self._done.exists() and self.output.exists()

    def plan_recovery(self, peer_finished: bool) -> bool:
        """Decide, from both ends' `finished`, how a recovered run goes; True when both
        reuse their finished results (no worker). spu's recovery of a run that already
        finished would append its result twice, so one finished end means a fresh run."""
        mine = self.finished
        if mine and peer_finished:
            return True
        if mine or peer_finished:
            for stale in (self._done, self.output):
                stale.unlink(missing_ok=True)
            shutil.rmtree(self.checkpoint, ignore_errors=True)
        return False

    def start(self, spec: RunSpec) -> None:
        peer_cert = self.folder / "peer.crt"
        peer_cert.write_bytes(spec.peer_end.certificate)
        self.checkpoint.mkdir(exist_ok=True)
        #: A run that continues from an earlier attempt's buckets (see `_discard_if_resumed`).
        self.resumed = any(self.checkpoint.iterdir())
        for stale in (self.output, self._linked, self._spu_log, self._done):
            stale.unlink(missing_ok=True)
        parties = [[spec.me, spec.listen], [spec.peer, spec.peer_end.address]]
        if spec.rank == 1:
            parties.reverse()
        config = {
            "rank": spec.rank,
            "parties": parties,
            "link_id": spec.link_id,
            "protocol": spec.protocol,
            "input": str(self.input.path.resolve()),
            "output": str(self.output.resolve()),
            "receiver_rank": spec.receiver_rank,
            "broadcast": spec.broadcast,
            "bucket_size": spec.bucket_size,
            "checkpoint": str(self.checkpoint.resolve()),
            "tls": {
                "cert": str(self._identity.cert_file.resolve()),
                "key": str(self._identity.key_file.resolve()),
                "peer_cert": str(peer_cert.resolve()),
            },
            "connect_timeout_ms": int(spec.connect_timeout * 1000),
            "recv_timeout_ms": int(spec.timeout * 1000),
        }
        config_file = self.folder / "worker.json"
        config_file.write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # To files, not pipes: spu logs a lot, and a full pipe would stall the worker.
        with open(self._out, "wb") as out, open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                [str(self.python), "-I", str(_WORKER), str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=env,
                cwd=self.folder,
            )

    def wait(
        self,
        timeout: float,
        cancel: Cancellation | None = None,
        check: Callable[[], None] | None = None,
    ) -> dict:
        """Block until the worker ends; its JSON result, or PsiError naming its failure.
        `check()` runs while waiting and may raise to stop the worker (the peer failed)."""
        process = self._process
        assert process is not None, "start() first"
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None:
                if check is not None:
                    check()
                self._check_handshake()
                if cancel is not None and cancel.is_set():
                    raise PsiError("PSI cancelled: the task is stopping")
                if time.monotonic() > deadline:
                    raise PsiError(f"the PSI engine did not finish within {timeout:g} s")
                time.sleep(_POLL_S)
        except BaseException:
            self.stop()
            raise
        finally:
            self._identity.discard()
        result = self._result()
        # The worker prints its result only once spu has written the intersection; an exit
        # status after that is the link's teardown (spu: 'SendThread error bad_weak_ptr' when
        # the peer's end closed first) and does not undo a finished run.
        if "intersection" not in result or "error" in result:
            reason = result.get("error") or (
                f"exit status {process.returncode}: {self._log_tail()}"
            )
            failed = ResumeFailed if self.resumed else PsiError
            raise failed(f"the PSI engine (spu) failed: {reason}{self._discard_if_resumed()}")
        if process.returncode != 0:
            _log.warning(
                "the PSI engine exited with status %s after its run finished; result kept",
                process.returncode,
            )
        self._done.write_text(json.dumps(result))
        return result

    def _discard_if_resumed(self) -> str:
        """spu sometimes cannot finish a run continued from a crashed attempt's buckets (the
        host's checkpoint trailing the collaborator's: 'duplicated read_cnt in result').
        A resumed run that fails drops its checkpoint: both parties then run it afresh in
        the same PSI (`engine_rpc._with_one_restart`), or, if that cannot happen (the peer
        is gone), the next recover does, instead of failing the same way forever."""
        if not self.resumed:
            return ""
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        for stale in (self._done, self.output):
            stale.unlink(missing_ok=True)
        return (
            "; this run continued an interrupted PSI and its checkpoint is now discarded: "
            "restart every party with recover=True to run the PSI afresh"
        )

    def _result(self) -> dict:
        """The worker's JSON line: the last stdout line that parses as a JSON object."""
        try:
            lines = self._out.read_bytes().decode(errors="replace").splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        return {}

    def _check_handshake(self) -> None:
        """Until the link is up, a failed TLS handshake means the other end is not the party
        whose certificate came over the Psi RPC (or a third party tried to connect): fail
        now, naming it, rather than retrying until the connect timeout."""
        if self._linked.exists():
            return
        try:
            text = self._spu_log.read_text(errors="replace")
        except OSError:
            return
        failed = [line for line in text.splitlines() if "SSL_do_handshake" in line]
        if failed:
            reason = failed[-1].split("Fail to SSL_do_handshake:")[-1].strip()
            raise PsiError(
                f"the PSI engine's TLS link was refused ({reason}): the other end did not "
                "present the certificate its party sent over the Psi RPC"
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def rows(self) -> np.ndarray:
        return read_rows(self.output, self.input.count)

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _log_tail(self) -> str:
        """The worker's last error lines (spu reports some failures only in its log)."""
        found: list[str] = []
        for path in (self._log, self._out, self._spu_log):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            found += [line for line in lines if "[error]" in line or "Error" in line]
        return " | ".join(line.strip()[:300] for line in found[-2:]) or "no error message"

    def close(self) -> None:
        self.stop()
        self._identity.discard()
