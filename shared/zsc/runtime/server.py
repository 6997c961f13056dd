"""One server factory for all four services: health, reflection, interceptors, size limits, graceful shutdown."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image

from zsc import __version__, data, errors, tracking
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.profiles import Profile, get_profile
from zsc.runtime.diagnostics import DiagnosticsServicer
from zsc.runtime.interceptors import SMALL_REQUEST_BYTES, ErrorMappingInterceptor
from zsc.runtime.memory import ByteBudget
from zsc.runtime.operations import OperationManager, OperationsServicer
from zsc.runtime.security import UNAUTHENTICATED_METHODS, BearerTokenInterceptor, TlsFiles, deny

log = logging.getLogger("zsc.server")

DEFAULT_PORTS = {"synthesis": 50051, "recovery": 50052, "generative": 50053, "classification": 50054}
# Each service's module exposes `create_service(runtime) -> Service`.
SERVICE_MODULES = {name: f"zsc_{name}.servicer" for name in DEFAULT_PORTS}
MiB = 1 << 20
# The profile roles each service's load() reads before it reports SERVING (the others load on first use). Their
# weights are checked on disk before the server listens, so a missing model stops it at once with one line.
STARTUP_ROLES = {"synthesis": ("text_to_image",), "recovery": ("clip",), "generative": (), "classification": ("clip",)}
MODEL_ROLES = ("clip", "text_to_image", "diffusion_classifier", "image_encoder", "text_encoder", "downstream_arch")
# Metadata a client sends with the profile it wants; a server of another profile refuses with FAILED_PRECONDITION.
PROFILE_METADATA = "x-zsc-profile"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def quiet_telemetry() -> None:
    """MLflow's usage telemetry off, unless the environment already says otherwise: MLflow 3 writes
    ``$HOME/.config/mlflow/telemetry.json`` and reports usage when online. ``MLFLOW_DISABLE_TELEMETRY=false`` in the
    environment turns it back on (zsc then sets neither variable)."""
    if "MLFLOW_DISABLE_TELEMETRY" not in os.environ:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        os.environ.setdefault("DO_NOT_TRACK", "true")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = an ephemeral port
    profile: str = "tiny"
    data_roots: list[Path] = field(default_factory=lambda: [Path.cwd()])
    max_message_bytes: int = 64 * MiB
    max_image_pixels: int = data.MAX_IMAGE_PIXELS  # per decoded image, inline or read from a dataset
    max_image_bytes: int = data.MAX_IMAGE_BYTES  # per encoded image
    max_concurrent_operations: int = 2
    # Operations one client address may start per hour (0: no cap): each one may leave MLflow runs and model versions.
    max_operations_per_hour: int = 600
    # Bytes client streams (EchoTensor) may hold at once over all calls; one stream holds at most 8 messages' worth.
    max_streamed_bytes: int = 512 * MiB
    rpc_workers: int = 16
    grace_seconds: float = 10.0
    auth_token: str | None = None  # bearer token every call must carry (health checks excepted)
    tls: TlsFiles | None = None
    allow_insecure_remote: bool = False  # bind a non-loopback host without auth (explicit --insecure)
    # A second, plaintext listener that serves grpc.health.v1 only: the kubelet's native gRPC probes speak no TLS.
    health_port: int | None = None

    def check_limits(self) -> None:
        limits = {
            "max_message_bytes": self.max_message_bytes,
            "max_image_pixels": self.max_image_pixels,
            "max_image_bytes": self.max_image_bytes,
            "max_concurrent_operations": self.max_concurrent_operations,
            "max_streamed_bytes": self.max_streamed_bytes,
        }
        for name, value in limits.items():
            if value < 1:
                raise errors.InvalidArgument(f"{name} must be positive, got {value}")
        if self.max_operations_per_hour < 0:
            raise errors.InvalidArgument(
                f"max_operations_per_hour must be 0 (no cap) or more, got {self.max_operations_per_hour}"
            )

    def check_exposure(self) -> None:
        """A service reachable from other machines must authenticate its callers over TLS, unless told otherwise:
        checked before anything binds."""
        if self.host in LOOPBACK or self.allow_insecure_remote:
            return
        if not self.auth_token:
            raise errors.FailedPrecondition(
                f"refusing to serve on {self.host} without authentication: set an auth token "
                "(--auth-token-file or ZSC_AUTH_TOKEN), or pass --insecure if the network is trusted"
            )
        if self.tls is None:
            raise errors.FailedPrecondition(
                f"refusing to serve on {self.host} without TLS: the bearer token would cross the network in "
                "cleartext; give --tls-cert and --tls-key, or pass --insecure if the network is trusted"
            )


class Service(Protocol):
    """What a service package provides to the runtime."""

    #: fully qualified gRPC service names, e.g. ["zsc.classification.v1.Classification"]
    grpc_services: list[str]

    def add_to_server(self, server: grpc.Server) -> None: ...

    def load(self) -> None:
        """Load models; the service reports SERVING once this returns."""


@dataclass
class ServiceRuntime:
    """Shared state a servicer gets: its config, profile, operations and readiness."""

    name: str
    config: ServerConfig
    profile: Profile
    operations: OperationManager
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str = ""

    @property
    def data_roots(self) -> list[Path]:
        return self.config.data_roots

    def decode_image(self, encoded: bytes, what: str = "image") -> Image.Image:
        """An inline image of a request, decoded under this server's size limits."""
        limits = self.config
        return data.decode_image(
            encoded, max_pixels=limits.max_image_pixels, max_bytes=limits.max_image_bytes, what=what
        )

    def require_ready(self) -> None:
        if self.load_error:
            raise errors.ModelUnavailable(self.load_error)
        if not self.ready.is_set():
            raise errors.ModelUnavailable(f"{self.name} is still loading its models; retry shortly")


def profile_models(profile: Profile) -> dict[str, str]:
    """The model reference of each role ``profile`` fills (roles it leaves empty are left out)."""
    return {role: getattr(profile, role) for role in MODEL_ROLES if getattr(profile, role)}


def require_startup_weights(service: str, profile: Profile) -> None:
    """Raise the one-line ModelUnavailable when a model ``service`` loads at startup is not on this machine."""
    for role in STARTUP_ROLES[service]:
        ref = getattr(profile, role)
        if not ref:
            continue
        if role == "clip":
            from zsc.models.clip import require_clip_weights

            require_clip_weights(ref)
        else:
            from zsc.models.diffusion import require_sd_weights

            require_sd_weights(ref)


def port_unavailable(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (e.g. "Address already in use"), or None if it can.

    The probe sets SO_REUSEADDR as gRPC does, so a port in TIME_WAIT counts as free and only a live listener blocks."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
    except OSError as err:
        return err.strerror or str(err)
    return None


class ProfileInterceptor(grpc.ServerInterceptor):
    """Refuses, with FAILED_PRECONDITION, a call whose ``x-zsc-profile`` names another profile than this server's:
    a client that asked for ``paper`` must not silently get ``tiny``'s answers. Health checks are exempt, like
    authentication, so load balancers and readiness polls need no metadata."""

    def __init__(self, service: str, profile: str) -> None:
        self.service, self.profile = service, profile

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method not in UNAUTHENTICATED_METHODS:
            wanted = dict(handler_call_details.invocation_metadata or ()).get(PROFILE_METADATA)
            if wanted is not None and wanted != self.profile:
                message = (
                    f"this {self.service} server runs profile {self.profile!r}, not {wanted!r}: point the client at "
                    f"a server of profile {wanted!r}, or drop --profile to use this one"
                )
                return deny(continuation(handler_call_details), grpc.StatusCode.FAILED_PRECONDITION, message)
        return continuation(handler_call_details)


class ZscServer:
    """A started gRPC server for one service. ``start()`` returns the bound port; models load in the background."""

    def __init__(self, service_name: str, config: ServerConfig) -> None:
        if service_name not in SERVICE_MODULES:
            raise errors.NotFound(f"unknown service {service_name!r}; one of {', '.join(SERVICE_MODULES)}")
        config.check_limits()
        config.check_exposure()
        quiet_telemetry()
        self.name = service_name
        self.config = config
        self.runtime = ServiceRuntime(
            name=service_name,
            config=config,
            profile=get_profile(config.profile),
            operations=OperationManager(
                service_name, config.max_concurrent_operations, max_per_hour=config.max_operations_per_hour
            ),
        )
        module = importlib.import_module(SERVICE_MODULES[service_name])
        self.service: Service = module.create_service(self.runtime)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.rpc_workers, thread_name_prefix=f"{service_name}-rpc"),
            # Authentication runs first, so an unauthenticated caller learns nothing from validation errors.
            interceptors=[
                *([BearerTokenInterceptor(config.auth_token)] if config.auth_token else []),
                ProfileInterceptor(service_name, self.runtime.profile.name),
                ErrorMappingInterceptor(),
            ],
            options=options,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        common_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(self.runtime.operations), self.server)
        self.stream_budget = ByteBudget(config.max_streamed_bytes)
        diagnostics = DiagnosticsServicer(config.max_message_bytes, self.info, self.stream_budget)
        common_pb2_grpc.add_DiagnosticsServicer_to_server(diagnostics, self.server)
        self.service.add_to_server(self.server)
        self.service_names = [*self.service.grpc_services, "zsc.common.v1.Operations", "zsc.common.v1.Diagnostics"]
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health_server: grpc.Server | None = None
        if config.health_port is not None:
            # the same servicer object, so both listeners always report the same status
            # health requests are tiny and the port needs no token: the C core refuses a larger body unread
            self.health_server = grpc.server(
                futures.ThreadPoolExecutor(2, thread_name_prefix=f"{service_name}-health"),
                options=[("grpc.max_receive_message_length", SMALL_REQUEST_BYTES)],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.port = 0
        self.health_port = 0
        self._loader: threading.Thread | None = None
        self.swept = threading.Event()  # set once the startup sweep of orphaned MLflow runs is over
        self.swept_runs: list[str] = []

    def _set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def info(self) -> common_pb2.ServerInfo:
        """What GetServerInfo answers: this server's service, profile, models and process."""
        return common_pb2.ServerInfo(
            service=self.name,
            profile=self.runtime.profile.name,
            models=profile_models(self.runtime.profile),
            pid=os.getpid(),
            host=socket.gethostname(),
            version=__version__,
            git_commit=tracking.git_commit(),
        )

    def start(self) -> int:
        """Check the startup models are on disk, bind, serve; return the port. Raises ModelUnavailable or
        FailedPrecondition (busy port) before anything listens."""
        require_startup_weights(self.name, self.runtime.profile)
        address = f"{self.config.host}:{self.config.port}"
        # Probed first: gRPC's own bind failure is a bare RuntimeError plus a C-core log line on stderr.
        busy = port_unavailable(self.config.host, self.config.port) if self.config.port else None
        if busy:
            raise errors.FailedPrecondition(f"{self.name} cannot listen on {address}: {busy}")
        try:
            if self.config.tls is not None:
                self.port = self.server.add_secure_port(address, self.config.tls.server_credentials())
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as err:  # grpc >= 1.60 raises instead of returning 0
            raise errors.FailedPrecondition(f"{self.name} cannot listen on {address}") from err
        if self.port == 0:
            raise errors.FailedPrecondition(f"{self.name} cannot listen on {address}")
        if self.health_server is not None:
            self.health_port = self._bind_health(self.health_server)
        tags = {"zsc.server.profile": self.runtime.profile.name}
        tags["zsc.server.address"] = f"{self.config.host}:{self.port}"
        tags.update({f"zsc.server.model.{role}": ref for role, ref in profile_models(self.runtime.profile).items()})
        self.runtime.operations.server_tags = tags
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        # Its own thread: a slow or unreachable tracking server must not hold back SERVING.
        threading.Thread(target=self._sweep, name=f"{self.name}-sweep", daemon=True).start()
        log.info("%s listening on %s:%d (profile %s)", self.name, self.config.host, self.port, self.config.profile)
        self._loader = threading.Thread(target=self._load, name=f"{self.name}-load", daemon=True)
        self._loader.start()
        return self.port

    def _bind_health(self, server: grpc.Server) -> int:
        address = f"{self.config.host}:{self.config.health_port}"
        busy = port_unavailable(self.config.host, self.config.health_port) if self.config.health_port else None
        try:
            port = 0 if busy else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise errors.FailedPrecondition(f"{self.name} cannot serve health on {address}: {busy or 'bind failed'}")
        return port

    def _sweep(self) -> None:
        """End as FAILED the MLflow runs that a killed server of this service on this host left RUNNING."""
        try:
            self.swept_runs = tracking.fail_orphaned_runs(self.name)
            if self.swept_runs:
                log.warning(
                    "%s marked %d run(s) of a dead server FAILED: %s",
                    self.name,
                    len(self.swept_runs),
                    ", ".join(self.swept_runs),
                )
        except Exception:
            log.exception("%s could not sweep orphaned MLflow runs", self.name)
        finally:
            self.swept.set()

    def _load(self) -> None:
        try:
            self.service.load()
        except Exception as err:
            self.runtime.load_error = f"{self.name} could not load its models: {err}"
            log.error("%s", self.runtime.load_error)
            return
        self.runtime.ready.set()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s is SERVING", self.name)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the models are loaded; raise the load error if loading failed."""
        assert self._loader is not None, "start() first"
        self._loader.join(timeout)
        self.runtime.require_ready()

    def stop(self, grace: float | None = None) -> bool:
        """Drain: refuse new calls, let in-flight calls finish within the grace period, cancel running jobs and wait
        as long again for them to end (their MLflow runs end KILLED). Returns False when a job is still running: a
        process that exits then may abort (a thread inside torch at interpreter teardown)."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.config.grace_seconds if grace is None else grace
        done = self.server.stop(grace)
        self.runtime.operations.shutdown(cancel=True, wait=False)
        done.wait()
        if self.health_server is not None:
            self.health_server.stop(0)
        ended = self.runtime.operations.shutdown(cancel=True, wait=True, timeout=grace)
        if not ended:
            log.warning("%s stopped with a job still running after %.0f s", self.name, grace)
        return ended

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve_forever(server: ZscServer, on_ready: Callable[[ZscServer], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then drain gracefully. Returns a process exit code."""
    stopping = threading.Event()

    def _handle(signum: int, _frame: object) -> None:
        log.info("%s got signal %d; draining", server.name, signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    # The process is this server's: dataset images read by the cores get its limits too.
    data.set_image_limits(server.config.max_image_pixels, server.config.max_image_bytes)
    server.start()
    if on_ready is not None:
        on_ready(server)
    while not stopping.wait(0.5):
        if server.runtime.load_error:
            server.stop(0)
            return 1
    server.stop()
    return 0


def operation_response(op: common_pb2.Operation, message_type: type) -> object:
    """Unpack a finished Operation's response into ``message_type``."""
    out = message_type()
    op.response.Unpack(out)
    return out
