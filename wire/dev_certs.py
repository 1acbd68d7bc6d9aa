"""Development certificates for mutual TLS: one CA and one certificate per node.

`python -m wire.dev_certs --out certs coordinator host bank` (what `make certs` runs) writes
``certs/ca.crt`` and ``certs/<name>.{crt,key}``. Each node certificate carries the node id as
CN and DNS SAN (peers are authorised by that name, see wire.peer_auth) plus ``localhost`` and
``127.0.0.1`` so loopback deployments verify too. `--client operator` adds a client-only
certificate for a person or service that operates tasks (`heteronn task`; the coordinator
lets it in through its `operators` setting). It shells out to the openssl CLI rather
than adding a Python crypto dependency. Not for production: the CA key sits beside the certs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_NAMES = ("coordinator", "host", "collaborator")
_DAYS = "825"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    path.chmod(0o600)


def create_ca(out: Path, name: str = "heteronn-dev-ca") -> tuple[Path, Path]:
    """A self-signed CA (``ca.crt``, ``ca.key``) in `out`; kept if it already exists so that
    adding a node later does not invalidate the certificates already handed out."""
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "ca.crt", out / "ca.key"
    if cert.is_file() and key.is_file():
        return cert, key
    _new_key(key)
    _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "3650",
             "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _san(name: str, extra: Sequence[str]) -> str:
    entries = []
    for value in dict.fromkeys([name, *extra, "localhost", "127.0.0.1"]):
        try:
            ipaddress.ip_address(value)
            entries.append(f"IP:{value}")
        except ValueError:
            entries.append(f"DNS:{value}")
    return ",".join(entries)


def _client_san(name: str) -> str:
    return f"DNS:{name}"


def issue(
    out: Path, name: str, extra_names: Sequence[str] = (), client_only: bool = False
) -> tuple[Path, Path]:
    """Certificate and key for node `name` signed by the CA in `out` (created if missing);
    usable as both TLS server and client. `extra_names` add SANs (e.g. a Kubernetes service
    DNS name). `client_only`: an operator's certificate, which never serves, so it carries
    only clientAuth and its own name (no loopback SANs)."""
    ca_cert, ca_key = create_ca(out)
    cert, key = out / f"{name}.crt", out / f"{name}.key"
    _new_key(key)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "node.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            "[v3]\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={'clientAuth' if client_only else 'serverAuth,clientAuth'}\n"
            f"subjectAltName={_client_san(name) if client_only else _san(name, extra_names)}\n"
        )
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", _DAYS,
                 "-extfile", str(ext), "-extensions", "v3")
    (out / "ca.srl").unlink(missing_ok=True)
    return cert, key


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wire.dev_certs",
        description="Create a development CA and per-node mTLS certificates.",
    )
    parser.add_argument("names", nargs="*", default=[],
                        help=f"node ids (certificate CN/SAN); default: {' '.join(DEFAULT_NAMES)} "
                        "(unless only --client is given)")
    parser.add_argument("--out", type=Path, default=Path("certs"), help="output folder")
    parser.add_argument("--dns", action="append", default=[],
                        help="extra SAN added to every certificate (repeatable)")
    parser.add_argument("--client", action="append", default=[], metavar="NAME",
                        help="also issue a client-only certificate, e.g. for the operator "
                        "running `heteronn task` (repeatable)")
    parser.add_argument("--readable", action="store_true",
                        help="make keys group/other-readable (containers running as another uid)")
    args = parser.parse_args(argv)
    create_ca(args.out)
    names = args.names or ([] if args.client else list(DEFAULT_NAMES))
    jobs = [(n, False) for n in names] + [(n, True) for n in args.client]
    for name, client_only in jobs:
        _cert, key = issue(args.out, name, args.dns, client_only=client_only)
        if args.readable:
            os.chmod(key, 0o644)
        kind = ", client only" if client_only else ""
        print(f"{args.out / name}.crt  (CN={name}{kind})")
    print(f"{args.out / 'ca.crt'}  (CA; keep ca.key private)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
