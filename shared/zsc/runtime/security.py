"""Optional transport security and bearer-token authentication for zsc services and clients.

Servers: TLS from a certificate and key (and a client CA for mutual TLS); a bearer token checked on every call
except gRPC health checks, which load balancers and `zsc health` make without credentials. Clients: the same token
from ``ZSC_AUTH_TOKEN`` and a CA bundle from ``ZSC_TLS_CA``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

UNAUTHENTICATED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it

    def server_credentials(self) -> grpc.ServerCredentials:
        for path in (self.cert, self.key, self.client_ca):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"TLS file {path} does not exist")
        pair = [(self.key.read_bytes(), self.cert.read_bytes())]
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=ca is not None)


def read_token(value: str | None = None, path: Path | None = None) -> str | None:
    """The bearer token from a file (preferred: it keeps the secret out of `ps`), a value, or ZSC_AUTH_TOKEN."""
    if path is not None:
        token = path.read_text().strip()
    else:
        token = value if value is not None else os.environ.get("ZSC_AUTH_TOKEN", "")
    if token and len(token) < 16:
        raise ValueError("the auth token must be at least 16 characters")
    return token or None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless the call carries `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method in UNAUTHENTICATED_METHODS:
            return continuation(handler_call_details)
        given = [value for key, value in handler_call_details.invocation_metadata or () if key == "authorization"]
        if len(given) > 1:  # which one a proxy or the server reads would be a guess: refuse, never pick
            handler = continuation(handler_call_details)
            return deny(handler, grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header")
        if given and hmac.compare_digest(str(given[0]).encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


def deny(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler | None:
    """A handler that aborts with ``code`` for interceptors that refuse a call, before its request body is read.

    grpcio reads and parses a unary request before it calls the handler; a client-streaming handler gets a lazy
    iterator instead. So the refusal is served as a client stream whatever the method is (on the wire a unary request
    is a stream of one message), and a 60 MiB unauthenticated body is neither parsed nor waited for."""
    if handler is None:
        return None

    def abort(requests: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    serializer = handler.response_serializer  # no deserializer: the body is never read
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, response_serializer=serializer)
    return grpc.stream_unary_rpc_method_handler(abort, response_serializer=serializer)


class _BearerMetadata(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)


def secure_client_credentials(ca: Path | None, token: str | None) -> grpc.ChannelCredentials:
    """TLS credentials (system roots when ``ca`` is None), with the bearer token as call credentials."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes() if ca else None)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(_BearerMetadata(token)))
    return creds
