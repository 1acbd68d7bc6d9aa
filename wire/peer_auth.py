"""Authorise peers by the name in their TLS certificate.

Mutual TLS (wire.tls) proves that a peer holds a certificate from the deployment's CA; this
interceptor adds that the certificate names a participant of the task (or the coordinator).
Without it, any organisation with a certificate from the same CA could push tensors into a
task it is not part of.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

import grpc

#: Health checks reveal nothing and are run by the process itself and by orchestrators; they
#: still need a certificate from the CA (the TLS handshake demands one), not a participant's.
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def peer_identities(context: grpc.ServicerContext) -> tuple[str, list[str]]:
    """(common name, subject alternative names) of the authenticated peer; empty when the
    connection is not mutual TLS."""
    auth = context.auth_context()
    cn = b"".join(auth.get("x509_common_name", [])[:1]).decode(errors="replace")
    sans = [v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", [])]
    return cn, sans


def tls_identities(context: grpc.ServicerContext) -> set[str]:
    """Every name in the caller's verified certificate (empty without mutual TLS)."""
    cn, sans = peer_identities(context)
    return {name for name in (cn, *sans) if name}


class PeerAuthInterceptor(grpc.ServerInterceptor):
    """Aborts PERMISSION_DENIED unless the peer certificate's CN (or a SAN) is in `allowed()`.

    `allowed` is called per RPC so the set can follow the task (participants + coordinator).
    """

    def __init__(
        self,
        allowed: Callable[[], Collection[str]],
        exempt_methods: Collection[str] = HEALTH_METHODS,
    ) -> None:
        self.allowed = allowed
        self.exempt = frozenset(exempt_methods)

    def _check(self, context: grpc.ServicerContext, method: str) -> None:
        cn, sans = peer_identities(context)
        if not cn and not sans:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method}: the connection carries no client certificate; this node requires "
                "mutual TLS (give the caller tls_ca_file, tls_cert_file and tls_key_file)",
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

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self.exempt:
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
