"""The runtime every service shares: health, reflection, Operations, size limits, signals. Real gRPC on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from zsc import codec
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.errors import Cancelled, ResourceExhausted
from zsc.runtime.client import OperationError, connect, watch
from zsc.runtime.operations import OperationManager
from zsc.runtime.server import DEFAULT_PORTS, ServerConfig, ZscServer

pytestmark = pytest.mark.service
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_health_is_not_serving_until_models_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsc_services.classification import servicer

    release = threading.Event()
    real_load = servicer.ClassificationService.load
    monkeypatch.setattr(servicer.ClassificationService, "load", lambda self: (release.wait(30), real_load(self)))
    server = ZscServer("classification", ServerConfig(data_roots=[tmp_path]))
    port = server.start()
    channel = connect(f"127.0.0.1:{port}")
    try:
        assert _health(channel) == NOT_SERVING
        assert _health(channel, "zsc.classification.v1.Classification") == NOT_SERVING
        release.set()
        server.wait_ready(60)
        assert _health(channel) == SERVING
        assert _health(channel, "zsc.classification.v1.Classification") == SERVING
    finally:
        channel.close()
        server.stop(0)
    assert server.health._server_status[""] == NOT_SERVING  # stop() announces the drain first


@pytest.mark.parametrize("service", sorted(DEFAULT_PORTS))
def test_every_service_starts_with_health_reflection_and_operations(service: str, tmp_path: Path) -> None:
    server = ZscServer(service, ServerConfig(data_roots=[tmp_path]))
    port = server.start()
    channel = connect(f"127.0.0.1:{port}")
    try:
        server.wait_ready(120)
        assert _health(channel) == SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert {"grpc.health.v1.Health", "zsc.common.v1.Operations", "zsc.common.v1.Diagnostics"} <= names
        assert set(server.service.grpc_services) <= names
        ops = common_pb2_grpc.OperationsStub(channel)
        assert list(ops.ListOperations(common_pb2.ListOperationsRequest()).operations) == []
        with pytest.raises(grpc.RpcError) as err:
            ops.GetOperation(common_pb2.GetOperationRequest(name="operations/nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        server.stop(0)


def _slow_job(seconds: float):
    def job(ctx):
        for i in range(int(seconds * 20)):
            ctx.check_cancelled()
            ctx.progress(i + 1, int(seconds * 20), loss=1.0 / (i + 1))
            time.sleep(0.05)
        return common_pb2.Status(code=0, message="finished")

    return job


def test_operation_progress_watch_and_result(classification_server, classification_channel) -> None:
    ops = classification_server.runtime.operations
    op = ops.start("test/slow", _slow_job(0.5), total=10, unit="steps")
    updates: list[common_pb2.Operation] = []
    final = watch(classification_channel, op, updates.append)
    assert final.done and final.metadata.state == common_pb2.OperationMetadata.SUCCEEDED
    assert len(updates) >= 3 and updates[-1].metadata.done_units == 10
    assert final.metadata.metrics["loss"] == pytest.approx(0.1)
    result = common_pb2.Status()
    assert final.response.Unpack(result) and result.message == "finished"


def test_cancel_gives_cancelled_and_health_stays_responsive(classification_server, classification_channel) -> None:
    ops_stub = common_pb2_grpc.OperationsStub(classification_channel)
    op = classification_server.runtime.operations.start("test/slow", _slow_job(30))
    time.sleep(0.2)
    t0 = time.perf_counter()
    assert _health(classification_channel) == SERVING
    assert time.perf_counter() - t0 < 5  # the job runs off the RPC threads
    ops_stub.CancelOperation(common_pb2.CancelOperationRequest(name=op.name))
    with pytest.raises(OperationError) as err:
        watch(classification_channel, op)
    assert err.value.code == grpc.StatusCode.CANCELLED
    final = ops_stub.GetOperation(common_pb2.GetOperationRequest(name=op.name))
    assert final.metadata.state == common_pb2.OperationMetadata.CANCELLED
    assert final.error.code == grpc.StatusCode.CANCELLED.value[0]


def test_operation_cap_answers_resource_exhausted() -> None:
    manager = OperationManager("test", max_concurrent=1)
    release = threading.Event()
    manager.start("block", lambda ctx: (release.wait(10), common_pb2.Status())[1])
    with pytest.raises(ResourceExhausted, match="cap is 1"):
        manager.start("block", lambda ctx: common_pb2.Status())
    release.set()
    manager.shutdown()


def test_failed_job_reports_its_status_code() -> None:
    manager = OperationManager("test")

    def bad(ctx):
        raise ValueError("threshold must be positive")

    op = manager.start("bad", bad)
    final = list(manager.watch(op.name))[-1]
    assert final.metadata.state == common_pb2.OperationMetadata.FAILED
    assert final.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert final.error.message == "threshold must be positive"

    def crash(ctx):
        raise KeyError("secret internals")

    final = list(manager.watch(manager.start("crash", crash).name))[-1]
    assert final.error.code == grpc.StatusCode.INTERNAL.value[0] and "secret" not in final.error.message
    manager.shutdown()
    assert isinstance(Cancelled("x"), Exception)


def test_tensor_echo_over_grpc_and_bad_chunks(classification_channel) -> None:
    stub = common_pb2_grpc.DiagnosticsStub(classification_channel)
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB: several chunks
    back = codec.decode_chunks(stub.EchoTensor(codec.encode_chunks(x, 256 << 10)))
    assert np.array_equal(back, x)
    bad = [common_pb2.TensorChunk(dtype="float32", shape=[4], offset=0, data=b"\0" * 12)]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.EchoTensor(iter(bad)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ended after 12 of 16 bytes" in err.value.details()
    bad = [common_pb2.TensorChunk(dtype="float32", shape=[-4], offset=0, data=b"")]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.EchoTensor(iter(bad)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _health(classification_channel) == SERVING


@pytest.mark.slow
def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    """A unary call that is running when SIGTERM arrives still completes; then the process exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zsc.cli.main", "serve", "classification", "--port", "0", "--data-root", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        port = int(line.strip().rsplit(":", 1)[1])
        channel = connect(f"127.0.0.1:{port}")
        from zsc.runtime.client import wait_until_serving

        wait_until_serving(channel, timeout=120)
        stub = common_pb2_grpc.DiagnosticsStub(channel)
        x = np.arange(1 << 20, dtype=np.float32)  # 4 MiB in 64 chunks, sent slowly so the call spans the signal
        result: dict[str, object] = {}
        sent = threading.Event()

        def slow_chunks():
            for i, chunk in enumerate(codec.encode_chunks(x, 64 << 10)):
                if i == 8:
                    sent.set()
                time.sleep(0.03)
                yield chunk

        def call() -> None:
            result["out"] = codec.decode_chunks(stub.EchoTensor(slow_chunks()))

        caller = threading.Thread(target=call)
        caller.start()
        assert sent.wait(30)
        proc.send_signal(signal.SIGTERM)
        caller.join(60)
        assert np.array_equal(result["out"], x)
        assert proc.wait(60) == 0
        channel.close()
    finally:
        proc.kill()
