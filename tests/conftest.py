"""Fixtures shared by the suite: real gRPC servers on loopback, the real CIFAR-10 data beside the checkout; and the
helpers several test files share (``from conftest import ...``): a bench script as a module, a cancel that must end
in CANCELLED, a CLI run in a child process, the generative tests' synthetic GZSL problem."""

from __future__ import annotations

import os

# pytest-xdist runs one worker per core: one intra-op thread each keeps the tiny models from oversubscribing the
# machine, where threads waiting on each other cost more than they compute. Child processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (REPO.parent / "shared" / "datasets").resolve()
CIFAR10_TEST = SHARED_DATASETS / "cifar10-test"
CIFAR10_TRAIN = SHARED_DATASETS / "cifar10-train-500"


@pytest.fixture(scope="session", autouse=True)
def isolated_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session logs into its own MLflow store, never the developer's mlflow/."""
    root = tmp_path_factory.mktemp("mlflow")
    old = {k: os.environ.get(k) for k in ("ZSC_MLFLOW_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["ZSC_MLFLOW_DIR"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch and BLAS on one thread for a module, whatever OMP_NUM_THREADS says: tiny models on 2 shared cores run
    fastest that way (OpenMP barriers waiting on a descheduled thread made some files 6x slower, sklearn fits 100x),
    and a fixed thread count keeps float reductions, so seeded numbers compared within a module, equal."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def start_server(service: str, data_roots: list[Path], env: dict[str, str] | None = None, **config: object):
    """A new server of its own (replicas, restarts); fixtures share servers through ``server_for`` instead.
    ``env`` holds variables the service reads once, while it starts."""
    from zsc.runtime.server import ServerConfig, ZscServer

    config.setdefault("profile", "tiny")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        server = ZscServer(service, ServerConfig(data_roots=data_roots, **config))
        server.start()
        server.wait_ready(300)
    return server


# The service tests' usual server: the tiny profile, the session's data root, 8 MiB messages.
SERVER_DEFAULTS: dict[str, object] = {"profile": "tiny", "max_message_bytes": 8 << 20}
CHANNEL_MESSAGE_BYTES = 32 << 20  # what a test's channel may receive: above every server's limit
STUBS = {  # (module, class) of the stub that the ``stub`` fixture gives for each service
    "synthesis": ("zsc.synthesis.v1.synthesis_pb2_grpc", "SynthesisStub"),
    "recovery": ("zsc.recovery.v1.recovery_pb2_grpc", "RecoveryStub"),
    "generative": ("zsc.generative.v1.generative_pb2_grpc", "GenerativeStub"),
    "classification": ("zsc.classification.v1.classification_pb2_grpc", "ClassificationStub"),
}


class ServerFactory:
    """``server_for(service, data_roots=..., env=..., **config)``: one server per distinct (service, config) for the
    session, so every test file asking for the same configuration shares it. Unset fields take SERVER_DEFAULTS and
    the session's data root; ``env`` is start_server's. ``channel(...)`` is
    the server's one shared channel; ``release(root)`` stops the servers of a module's own data root early."""

    def __init__(self, data_root: Path) -> None:
        self.data_root = data_root
        self.servers: dict[tuple, Any] = {}
        self.channels: dict[tuple, grpc.Channel] = {}

    def key(self, service: str, data_roots: list[Path] | None, env: dict[str, str] | None, config: dict) -> tuple:
        roots = data_roots if data_roots is not None else [self.data_root]
        config = {**SERVER_DEFAULTS, **config}
        return service, tuple(str(p) for p in roots), tuple(sorted((env or {}).items())), tuple(sorted(config.items()))

    def __call__(
        self, service: str, data_roots: list[Path] | None = None, env: dict[str, str] | None = None, **config: object
    ):
        key = self.key(service, data_roots, env, config)
        if key not in self.servers:
            self.servers[key] = start_server(service, [Path(p) for p in key[1]], dict(key[2]), **dict(key[3]))
        return self.servers[key]

    def channel(
        self, service: str, data_roots: list[Path] | None = None, env: dict[str, str] | None = None, **config: object
    ) -> grpc.Channel:
        """The one channel the session's tests share to that server."""
        return self.channel_to(self(service, data_roots, env, **config))

    def channel_to(self, server) -> grpc.Channel:
        """The shared channel to one of this factory's servers."""
        key = next(k for k, s in self.servers.items() if s is server)
        if key not in self.channels:
            self.channels[key] = open_channel(server)
        return self.channels[key]

    def release(self, root: Path) -> None:
        """Stop (and forget) every server that serves ``root``."""
        for key in [k for k in self.servers if str(root) in k[1]]:
            if key in self.channels:
                self.channels.pop(key).close()
            self.servers.pop(key).stop(grace=1)

    def stop_all(self) -> None:
        for channel in self.channels.values():
            channel.close()
        for server in self.servers.values():
            server.stop(grace=1)
        self.channels.clear()
        self.servers.clear()


@pytest.fixture(scope="session")
def server_for(data_root: Path) -> Iterator[ServerFactory]:
    """The session's servers (per xdist worker: session fixtures are per process)."""
    factory = ServerFactory(data_root)
    yield factory
    factory.stop_all()


def open_channel(server) -> grpc.Channel:
    from zsc.runtime.client import connect

    return connect(f"127.0.0.1:{server.port}", max_message_bytes=CHANNEL_MESSAGE_BYTES)


def make_stub(service: str, channel: grpc.Channel):
    import importlib

    module, name = STUBS[service]
    return getattr(importlib.import_module(module), name)(channel)


def server_mark(request: pytest.FixtureRequest) -> pytest.Mark:
    mark = request.node.get_closest_marker("server")
    if mark is None:
        raise pytest.UsageError(f"{request.node.name} uses the server fixtures without a pytest.mark.server(...)")
    return mark


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, server_for: ServerFactory):
    """The module's server, named by its ``pytest.mark.server(service, **config)`` mark (config as for server_for)."""
    mark = server_mark(request)
    return server_for(*mark.args, **mark.kwargs)


@pytest.fixture(scope="module")
def channel(server, server_for: ServerFactory) -> grpc.Channel:
    """The shared channel to the module's server (a module may override ``server``, through server_for)."""
    return server_for.channel_to(server)


@pytest.fixture(scope="module")
def stub(server, channel: grpc.Channel):
    """The module's service's stub (for the classification server: Classification's)."""
    return make_stub(server.name, channel)


@pytest.fixture(scope="session")
def classification_server(server_for: ServerFactory):
    return server_for("classification", [server_for.data_root, SHARED_DATASETS])


@pytest.fixture(scope="session")
def classification_channel(server_for: ServerFactory) -> grpc.Channel:
    return server_for.channel("classification", [server_for.data_root, SHARED_DATASETS])


def load_bench(name: str) -> Any:
    """bench/<name>.py as a module (bench/ is not a package), registered in sys.modules so that its dataclasses
    resolve their annotations."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"zsc_bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cancel_and_wait(channel: grpc.Channel, op: Any) -> Any:
    """Cancel operation ``op``, check that it ends CANCELLED (watching it raises, with that code), and return its
    final state."""
    from zsc.common.v1 import common_pb2, common_pb2_grpc
    from zsc.runtime.client import OperationError, watch

    common_pb2_grpc.OperationsStub(channel).CancelOperation(common_pb2.CancelOperationRequest(name=op.name))
    with pytest.raises(OperationError) as err:
        watch(channel, op)
    assert err.value.code == grpc.StatusCode.CANCELLED
    final = err.value.operation
    assert final.metadata.state == common_pb2.OperationMetadata.CANCELLED
    return final


def zsc_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``zsc <args>`` in a child process (a fresh interpreter: the CLI as a user starts it), output captured; ``env``
    and ``cwd`` default to this process's."""
    return subprocess.run(
        [sys.executable, "-m", "zsc.cli.main", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


Sampler = Callable[[int, "torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]


def mlp_gzsl_problem(
    num_classes: int, text_dim: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, Sampler]:
    """The generative tests' GZSL problem of known structure: text features a_c ~ N(0, I) [C, D_t], class means
    m_c = normalize(f(a_c)) [C, D] for a fixed random 2-layer tanh MLP f, and ``sample(n, classes)``: n samples
    normalize(m_c + 0.1·noise) of each class and their labels. One generator draws everything, in call order."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    text = torch.randn(num_classes, text_dim, generator=g)
    w1 = torch.randn(text_dim, 64, generator=g) / text_dim**0.5
    w2 = torch.randn(64, dim, generator=g) / 8.0
    means = F.normalize(torch.tanh(text @ w1) @ w2, dim=-1)

    def sample(n: int, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = classes.repeat_interleave(n)
        return F.normalize(means[y] + 0.1 * torch.randn(len(y), dim, generator=g), dim=-1), y

    return text, means, sample


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server(service, **config): the module's server fixture (see server_for)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if not CIFAR10_TEST.is_dir():
        skip = pytest.mark.skip(reason=f"needs {CIFAR10_TEST}")
        for item in items:
            if "realdata" in item.keywords:
                item.add_marker(skip)
