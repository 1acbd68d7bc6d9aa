"""Authorise peers by the name in their TLS certificate, pinned to who may issue it.

Mutual TLS (wire.tls) proves that a peer holds a certificate from one of the CAs in the
deployment's bundle; this module reads which names that certificate may stand for, and the
interceptor adds that one of them is a participant of the task (or the coordinator).

A certificate's names are its CN and its DNS subject alternative names; IP addresses (and
URI or e-mail SANs) are never identities. With several CAs in the bundle (one per
organisation), any of them could mint a certificate named `host`, `coordinator` or
`operator`, so each name is accepted only as its pin allows (`Trust`, settings `tls_pins`):
pinned to a fingerprint, only that certificate; pinned to a CA file, only certificates that
CA issued; unpinned, only when the bundle holds a single CA.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from wire.handler_wrapping import HandlerInterceptor

#: A pin naming a certificate by the SHA-256 of its DER bytes: "sha256:" + 64 hex digits.
FINGERPRINT_PREFIX = "sha256:"

#: Health checks reveal nothing and are run by the process itself and by orchestrators; they
#: still need a certificate from the CA (the TLS handshake demands one), not a participant's.
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def fingerprint(cert: x509.Certificate) -> str:
    """The pin that names exactly this certificate."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


@functools.lru_cache(maxsize=256)
def _certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@functools.lru_cache(maxsize=64)
def _bundle(path: str) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))


def _issued_by(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:  # another issuer's name, key type or signature
            continue
    return False


@dataclass(frozen=True)
class Trust:
    """Which certificates may carry which names: the CA bundle of the handshake and the
    per-name pins (name -> "sha256:<hex>" or a PEM file of the CA(s) that may issue it)."""

    ca_file: Path | None = None
    pins: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """ValueError naming a pin that can never match (bad fingerprint, unreadable CA)."""
        for name, pin in self.pins.items():
            if pin.startswith(FINGERPRINT_PREFIX):
                digits = pin.removeprefix(FINGERPRINT_PREFIX)
                if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
                    raise ValueError(
                        f"tls_pins['{name}'] = {pin!r}: a fingerprint pin is 'sha256:' and 64 "
                        "lower-case hex digits (openssl x509 -noout -fingerprint -sha256)"
                    )
            else:
                try:
                    _bundle(pin)
                except (OSError, ValueError) as exc:
                    raise ValueError(
                        f"tls_pins['{name}'] = {pin!r} is neither 'sha256:<hex>' nor a readable "
                        f"PEM file of CA certificates ({exc})"
                    ) from None

    def accepts(self, name: str, cert: x509.Certificate) -> bool:
        pin = self.pins.get(name)
        if pin is None:  # unpinned: safe only when one CA issues every certificate
            return self.ca_file is None or len(_bundle(str(self.ca_file))) <= 1
        if pin.startswith(FINGERPRINT_PREFIX):
            return fingerprint(cert) == pin.lower()
        return _issued_by(cert, _bundle(pin))

    def pinned_ca(self, name: str) -> Path | None:
        """The CA file a connection to `name` should trust instead of the whole bundle."""
        pin = self.pins.get(name)
        return Path(pin) if pin is not None and not pin.startswith(FINGERPRINT_PREFIX) else None


def certificate_names(cert: x509.Certificate) -> tuple[str, list[str]]:
    """(CN, DNS SANs) of a certificate; IP, URI and e-mail SANs are not names."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns = []
    return cn, dns


def peer_identities(
    context: grpc.ServicerContext, trust: Trust | None = None
) -> tuple[str, list[str]]:
    """(common name, DNS SANs) of the authenticated peer that `trust` lets it stand for
    (a name its pin refuses is dropped); empty when the connection is not mutual TLS."""
    pems = context.auth_context().get("x509_pem_cert", [])
    if not pems:
        return "", []
    cert = _certificate(pems[0])
    cn, dns = certificate_names(cert)
    trust = trust or Trust()
    ok = functools.partial(trust.accepts, cert=cert)
    return (cn if cn and ok(cn) else ""), [n for n in dns if ok(n)]


def tls_identities(context: grpc.ServicerContext, trust: Trust | None = None) -> set[str]:
    """Every name the caller's verified certificate may stand for (empty without mTLS)."""
    cn, sans = peer_identities(context, trust)
    return {name for name in (cn, *sans) if name}


class PeerAuthInterceptor(HandlerInterceptor):
    """Aborts PERMISSION_DENIED unless the peer certificate's CN (or a SAN) is in `allowed()`.

    `allowed` is called per RPC so the set can follow the task (participants + coordinator).
    """

    def __init__(
        self,
        allowed: Callable[[], Collection[str]],
        exempt_methods: Collection[str] = HEALTH_METHODS,
        trust: Trust | None = None,
    ) -> None:
        super().__init__(self._wrap)
        self.allowed = allowed
        self.exempt = frozenset(exempt_methods)
        self.trust = trust

    def _check(self, context: grpc.ServicerContext, method: str) -> None:
        if not context.auth_context().get("x509_pem_cert"):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method}: the connection carries no client certificate; this node requires "
                "mutual TLS (give the caller tls_ca_file, tls_cert_file and tls_key_file)",
            )
        cn, sans = peer_identities(context, self.trust)
        if not cn and not sans:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method}: the peer certificate names no identity its issuer may vouch for "
                "(with several CAs in the bundle every name needs a pin: node setting tls_pins)",
            )
        allowed = set(self.allowed())
        if cn in allowed or any(name in allowed for name in sans):
            return
        shown = cn or sans[0]
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method}: peer certificate '{shown}' (SANs: {', '.join(sans) or 'none'}) names no "
            f"participant of this task (allowed: {', '.join(sorted(allowed)) or 'none yet'}); "
            "issue the peer a certificate whose CN is its node id, or add it to the task",
        )

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method in self.exempt:
            return handler
        check = self._check

        def guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                check(context, method)
                return behavior(request, context)

            return wrapped

        def guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                check(context, method)
                yield from behavior(request, context)

            return wrapped

        ser, de = handler.response_serializer, handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(guard_unary(handler.unary_unary), de, ser)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(guard_unary(handler.stream_unary), de, ser)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guard_stream(handler.unary_stream), de, ser
            )
        return grpc.stream_stream_rpc_method_handler(guard_stream(handler.stream_stream), de, ser)
