"""Fixtures shared by the suite: real gRPC servers on loopback, the real CIFAR-10 data beside the checkout."""

from __future__ import annotations

import os

# pytest-xdist runs one worker per core: one intra-op thread each keeps the tiny models from oversubscribing the
# machine, where threads waiting on each other cost more than they compute. Child processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

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


def start_server(service: str, data_roots: list[Path], **config: object):
    from zsc.runtime.server import ServerConfig, ZscServer

    server = ZscServer(service, ServerConfig(profile="tiny", data_roots=data_roots, **config))
    server.start()
    server.wait_ready(300)
    return server


@pytest.fixture(scope="session")
def classification_server(data_root: Path):
    server = start_server("classification", [data_root, SHARED_DATASETS], max_message_bytes=8 << 20)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="session")
def classification_channel(classification_server) -> Iterator[grpc.Channel]:
    from zsc.runtime.client import connect

    channel = connect(f"127.0.0.1:{classification_server.port}", max_message_bytes=32 << 20)
    yield channel
    channel.close()


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
