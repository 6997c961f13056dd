"""Client helpers: channels with size limits, retries for idempotent RPCs and a deadline on every call, and the one
place a client finds (or starts) its service and says which server answered."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from zsc.common.v1 import common_pb2, common_pb2_grpc

log = logging.getLogger("zsc.client")
MiB = 1 << 20
PROFILE_METADATA = "x-zsc-profile"  # the profile a client wants; servers of another profile refuse the call
DEFAULT_TIMEOUT = 60.0  # unary calls
STREAM_TIMEOUT = 24 * 3600.0  # watches and streams of long jobs

# Only RPCs that are safe to repeat are retried on UNAVAILABLE: reads, and pure functions of their request. RPCs that
# start an Operation are not: a retry after a lost reply would start the job twice.
IDEMPOTENT = {
    "grpc.health.v1.Health": ["Check"],
    "zsc.common.v1.Operations": ["GetOperation", "ListOperations", "WatchOperation"],
    "zsc.classification.v1.Classification": ["ZeroShot"],
    "zsc.classification.v1.Downstream": ["Predict"],
    "zsc.synthesis.v1.Synthesis": ["ListTricks"],
}
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    names = [{"service": s, "method": m} for s, methods in IDEMPOTENT.items() for m in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


class _RewriteCallDetails(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Base of the client interceptors that only change a call's details (deadline, metadata)."""

    def rewrite(self, details: grpc.ClientCallDetails, streaming: bool) -> grpc.ClientCallDetails:
        raise NotImplementedError

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self.rewrite(details, False), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self.rewrite(details, True), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self.rewrite(details, True), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self.rewrite(details, True), request_iterator)


class _DefaultDeadline(_RewriteCallDetails):
    """Gives every call a deadline when the caller set none."""

    def __init__(self, unary: float, stream: float) -> None:
        self.unary, self.stream = unary, stream

    def rewrite(self, details: grpc.ClientCallDetails, streaming: bool) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return _CallDetails(details, timeout=self.stream if streaming else self.unary)


class _AddMetadata(_RewriteCallDetails):
    """Adds fixed metadata to every call: the bearer token on plaintext channels, the profile the client wants."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers

    def rewrite(self, details: grpc.ClientCallDetails, streaming: bool) -> grpc.ClientCallDetails:
        return _CallDetails(details, metadata=[*(details.metadata or ()), *self.headers])


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, **changes: Any) -> None:
        for field in ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"):
            setattr(self, field, changes.get(field, getattr(base, field, None)))


def connect(
    address: str,
    *,
    max_message_bytes: int = 64 * MiB,
    timeout: float = DEFAULT_TIMEOUT,
    stream_timeout: float = STREAM_TIMEOUT,
    token: str | None = None,
    tls_ca: Path | None = None,
    profile: str | None = None,
) -> grpc.Channel:
    """A channel to ``address`` with zsc's limits, retry policy and default deadlines.

    ``token`` (default: ZSC_AUTH_TOKEN) is sent as a bearer token; TLS is used when ``tls_ca`` (default: ZSC_TLS_CA)
    is set or ZSC_TLS=1, else the channel is plaintext (loopback and trusted networks). ``profile`` (a profile name)
    goes with every call, and a server of another profile answers FAILED_PRECONDITION.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
    ]
    token = token if token is not None else os.environ.get("ZSC_AUTH_TOKEN") or None
    ca = tls_ca or (Path(os.environ["ZSC_TLS_CA"]) if os.environ.get("ZSC_TLS_CA") else None)
    headers = [(PROFILE_METADATA, profile)] if profile else []
    if ca is not None or os.environ.get("ZSC_TLS") == "1":
        from zsc.runtime.security import secure_client_credentials

        channel = grpc.secure_channel(address, secure_client_credentials(ca, token), options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
        if token:  # plaintext: call credentials need TLS, so the token rides as metadata
            headers.append(("authorization", f"Bearer {token}"))
    interceptors = [_DefaultDeadline(timeout, stream_timeout), *([_AddMetadata(headers)] if headers else [])]
    return grpc.intercept_channel(channel, *interceptors)


def address_from_env(service: str) -> str | None:
    return os.environ.get(f"ZSC_{service.upper()}_ADDRESS") or None


def profile_name(profile: str) -> str:
    """The name a server reports for ``profile``: a registered name as is, a JSON profile file's ``name`` field."""
    path = Path(profile)
    if path.suffix == ".json" and path.is_file():
        try:
            return str(json.loads(path.read_text())["name"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"profile file {path} has no name field") from err
    return profile


def server_info(channel: grpc.Channel, timeout: float = 10.0) -> common_pb2.ServerInfo:
    """Who answers on ``channel``; FAILED_PRECONDITION (as grpc.RpcError) if it runs another profile than asked."""
    return common_pb2_grpc.DiagnosticsStub(channel).GetServerInfo(common_pb2.GetServerInfoRequest(), timeout=timeout)


def describe(address: str, info: common_pb2.ServerInfo) -> str:
    """One line: the address, profile and model ids of the server that answered."""
    models = ", ".join(f"{role} {ref}" for role, ref in sorted(info.models.items())) or "none"
    line = f"{info.service} served by {address} (profile {info.profile}, models: {models}; pid {info.pid})"
    if info.profile == "tiny":  # said where the numbers are shown, so nobody reads them as results
        line += "; tiny models have random weights: every accuracy they give is chance level by design"
    return line


def wait_until_serving(channel: grpc.Channel, service: str = "", timeout: float = 120.0) -> None:
    """Poll grpc health until SERVING; raise TimeoutError with the last status otherwise."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as err:
            last = err.code().name
        time.sleep(0.1)
    raise TimeoutError(f"service not SERVING after {timeout:.0f} s (last status: {last})")


class OperationError(Exception):
    """A finished operation that failed or was cancelled."""

    def __init__(self, op: common_pb2.Operation) -> None:
        self.code = grpc.StatusCode.UNKNOWN
        for code in grpc.StatusCode:
            if code.value[0] == op.error.code:
                self.code = code
        super().__init__(f"{self.code.name}: {op.error.message}")
        self.operation = op


def watch(
    channel: grpc.Channel,
    op: common_pb2.Operation,
    on_update: Callable[[common_pb2.Operation], None] | None = None,
) -> common_pb2.Operation:
    """Follow an operation to its end through WatchOperation; raise OperationError if it did not succeed."""
    stub = common_pb2_grpc.OperationsStub(channel)
    last = op
    if not op.done:
        for last in stub.WatchOperation(common_pb2.WatchOperationRequest(name=op.name)):
            if on_update is not None:
                on_update(last)
    if not last.done:  # the stream ended early (server shutdown): ask once more
        last = stub.GetOperation(common_pb2.GetOperationRequest(name=op.name))
    if last.HasField("error"):
        raise OperationError(last)
    return last


def unpack(op: common_pb2.Operation, message_type: type) -> Any:
    out = message_type()
    op.response.Unpack(out)
    return out


@contextmanager
def service_channel(
    service: str,
    address: str | None = None,
    *,
    profile: str | None = None,
    data_roots: list[Path] | None = None,
    ready_timeout: float = 600.0,
) -> Iterator[grpc.Channel]:
    """A channel to ``service``: at ``address``, at ``ZSC_<SERVICE>_ADDRESS``, or else at a server this process starts
    on an ephemeral loopback port for the duration of the block (still over gRPC).

    ``profile`` (default: whatever a running server has; ``tiny`` for one started here) is sent with every call, so
    a running server of another profile refuses with FAILED_PRECONDITION. The server that answers is logged at INFO
    on ``zsc.client`` ("served by ADDRESS (profile P, models ...)")."""
    address = address or address_from_env(service)
    if address:
        channel = connect(address, profile=profile_name(profile) if profile else None)
        try:
            wait_until_serving(channel, timeout=ready_timeout)
            log.info("%s", describe(address, server_info(channel)))
            yield channel
        finally:
            channel.close()
        return
    from zsc.runtime.server import ServerConfig, ZscServer

    config = ServerConfig(profile=profile or "tiny", data_roots=data_roots or [Path.cwd()])
    server = ZscServer(service, config)
    port = server.start()
    try:
        server.wait_ready(ready_timeout)
        address = f"127.0.0.1:{port}"
        channel = connect(address)
        try:
            log.info("%s", describe(f"{address}, started for this command", server_info(channel)))
            yield channel
        finally:
            channel.close()
    finally:
        server.stop(grace=5)
