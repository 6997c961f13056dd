"""Client helpers: channels with size limits, retries for idempotent RPCs and a deadline on every call, and the one
place a client finds (or starts) its service and says which server answered.

A target may stand for several replicas: a comma list ``a:1,b:2``, gRPC's ``ipv4:a:1,b:2`` / ``ipv6:[..]:1,...``, or
``dns:///name:port`` (every address the name resolves to, e.g. a Kubernetes headless Service). ``resolve_target``
turns one into its replicas. Two ways to use several replicas:

- quick unary RPCs (ZeroShot, Predict) go through one ``balanced`` channel: gRPC's ``round_robin`` policy in the
  service config spreads the calls, and client-side health checking keeps them off replicas not SERVING;
- long jobs are Operations that live on the replica that started them, so their Get/Watch/Cancel must reach that
  replica: sharded commands keep one channel per resolved replica (``zsc.client.fanout``), and any other channel uses
  ``pick_first``, which keeps all of one channel's calls on one connection.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def service_config(balanced: bool = False) -> str:
    """The channel's service config: retries of the idempotent RPCs, and the load-balancing policy.

    ``balanced``: ``round_robin`` over every address the target resolves to, with client-side health checking (a
    replica still loading its models answers NOT_SERVING and gets no calls). Otherwise ``pick_first``: one
    connection, so an Operation's follow-up calls reach the replica that started it."""
    names = [{"service": s, "method": m} for s, methods in IDEMPOTENT.items() for m in methods]
    config: dict[str, Any] = {"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": ""}
    else:
        config["loadBalancingConfig"] = [{"pick_first": {}}]
    return json.dumps(config)


@dataclass(frozen=True)
class Replica:
    """One server of a target: ``address`` (host:port) to dial, and the DNS ``name`` it was resolved from ("" when
    dialled as written), which TLS checks the certificate against."""

    address: str
    name: str = ""


def resolve_target(target: str) -> list[Replica]:
    """The replicas a target stands for, in order, each once (see the module docstring for the forms).

    ``dns:`` targets are resolved here, once, with the system resolver (what a headless Service's DNS answers);
    a plain ``host:port`` is one replica, dialled as written. Raises ValueError (one line) for a malformed target."""
    target = target.strip()
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        replicas = [Replica(_check_port(a.strip(), target)) for a in rest.split(",") if a.strip()]
    elif sep and scheme == "dns":
        replicas = _resolve_dns(rest, target)
    else:
        replicas = [Replica(a.strip()) for a in target.split(",") if a.strip()]
    if not replicas:
        raise ValueError(f"no address in target {target!r}")
    return list(dict.fromkeys(replicas))


def grpc_target(target: str) -> str:
    """``target`` as gRPC's resolvers read it: a zsc comma list of IP literals becomes an ``ipv4:``/``ipv6:``
    target; any other form is already one."""
    parts = [a.strip() for a in target.split(",") if a.strip()]
    if len(parts) <= 1 or target.startswith(("ipv4:", "ipv6:", "dns:")):
        return target
    try:
        families = {ipaddress.ip_address(_split_host_port(a, target)[0]).version for a in parts}
    except ValueError:
        raise ValueError(
            f"{target!r}: one channel over several host names needs a dns:/// name or ipv4: addresses"
        ) from None
    if len(families) > 1:
        raise ValueError(f"{target!r} mixes IPv4 and IPv6 addresses")
    return f"ipv{families.pop()}:" + ",".join(parts)


def _split_host_port(address: str, target: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{address!r} in target {target!r} has no host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _check_port(address: str, target: str) -> str:
    _split_host_port(address, target)
    return address


def _resolve_dns(rest: str, target: str) -> list[Replica]:
    if rest.startswith("//"):  # dns://AUTHORITY/name:port: the system resolver cannot ask a given DNS server
        authority, _, rest = rest[2:].partition("/")
        if authority:
            raise ValueError(f"{target!r}: a DNS server in the target is not supported; write dns:///NAME:PORT")
    host, port = _split_host_port(rest, target)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"{target!r}: {host} does not resolve ({err.strerror})") from None
    replicas = []
    for family, *_, sockaddr in infos:
        ip = str(sockaddr[0])
        replicas.append(Replica(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}", host))
    return replicas


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
    balanced: bool = False,
    name: str = "",
) -> grpc.Channel:
    """A channel to ``address`` (any target ``grpc_target`` reads) with zsc's limits, retry policy and default
    deadlines.

    ``token`` (default: ZSC_AUTH_TOKEN) is sent as a bearer token; TLS is used when ``tls_ca`` (default: ZSC_TLS_CA)
    is set or ZSC_TLS=1, else the channel is plaintext (loopback and trusted networks). ``profile`` (a profile name)
    goes with every call, and a server of another profile answers FAILED_PRECONDITION. ``balanced``: round_robin
    over the target's addresses (``service_config``). ``name``: the DNS name an IP address was resolved from
    (``Replica.name``): TLS checks the server's certificate against it, and it is the calls' authority.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(balanced)),
    ]
    if name:
        options += [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
    address = grpc_target(address)
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


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """The grpc health status name of ``service`` ("" = the server): SERVING, NOT_SERVING, ... (grpc.RpcError when
    nothing answers)."""
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_until_serving(
    channel: grpc.Channel, service: str = "", timeout: float = 120.0, should_stop: Callable[[], bool] | None = None
) -> None:
    """Poll grpc health until SERVING; raise TimeoutError with the last status otherwise (also when ``should_stop``
    turns true first: the caller no longer needs this server)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline and not (should_stop is not None and should_stop()):
        try:
            last = health_status(channel, service)
            if last == "SERVING":
                return
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
    balanced: bool = False,
    name: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[grpc.Channel]:
    """A channel to ``service``: at ``address``, at ``ZSC_<SERVICE>_ADDRESS``, or else at a server this process starts
    on an ephemeral loopback port for the duration of the block (still over gRPC).

    ``profile`` (default: whatever a running server has; ``tiny`` for one started here) is sent with every call, so
    a running server of another profile refuses with FAILED_PRECONDITION. The server that answers is logged at INFO
    on ``zsc.client`` ("served by ADDRESS (profile P, models ...)"). ``balanced``, ``name``: see ``connect``;
    ``should_stop``: give up waiting for the server to be SERVING (TimeoutError)."""
    address = address or address_from_env(service)
    if address:
        channel = connect(address, profile=profile_name(profile) if profile else None, balanced=balanced, name=name)
        try:
            wait_until_serving(channel, timeout=ready_timeout, should_stop=should_stop)
            # balanced: the replica that answered this call is one of those the later calls go to
            several = balanced and len(resolve_target(address)) > 1
            label = f"{address} (round_robin; this reply from one replica)" if several else address
            log.info("%s", describe(label, server_info(channel)))
            yield channel
        finally:
            channel.close()
        return
    from zsc.runtime.server import ServerConfig, ZscServer
    from zsc.runtime.tuning import apply_cpu_tuning

    apply_cpu_tuning()  # this process now serves too
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
