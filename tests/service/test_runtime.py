"""The runtime every service shares: health, reflection, Operations, size limits, signals. Real gRPC on loopback."""

from __future__ import annotations

import logging
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
from conftest import cancel_and_wait
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from zsc import codec
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.errors import ResourceExhausted
from zsc.runtime.client import connect, watch
from zsc.runtime.operations import OperationManager
from zsc.runtime.server import DEFAULT_PORTS, ServerConfig, ZscServer

pytestmark = pytest.mark.service
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(channel: grpc.Channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_health_is_not_serving_until_models_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsc_classification import servicer

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
    op = classification_server.runtime.operations.start("test/slow", _slow_job(30))
    time.sleep(0.2)
    assert _health(classification_channel) == SERVING  # how fast it answers: bench/health_under_load.py
    final = cancel_and_wait(classification_channel, op)
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


# --------------------------------------------------------------------------------- hostile bytes, limits, hang-ups
GARBAGE = b"\xff\xff\xff\xff"  # a field number of 0x1fffffff... with no value: parses as no message


@pytest.mark.parametrize(
    "method,kind",
    [
        ("/zsc.classification.v1.Classification/ZeroShot", "unary"),
        ("/zsc.common.v1.Operations/WatchOperation", "server stream"),
        ("/zsc.common.v1.Diagnostics/EchoTensor", "client stream"),
        ("/grpc.health.v1.Health/Check", "unary"),
    ],
)
def test_undecodable_request_bytes_are_invalid_argument(classification_channel, method: str, kind: str) -> None:
    """Not grpcio's INTERNAL "Exception deserializing request!": the guarded deserializer names the message type."""
    with pytest.raises(grpc.RpcError) as err:
        if kind == "client stream":
            list(classification_channel.stream_stream(method)(iter([GARBAGE]), timeout=30))
        elif kind == "server stream":
            list(classification_channel.unary_stream(method)(GARBAGE, timeout=30))
        else:
            classification_channel.unary_unary(method)(GARBAGE, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("the request bytes do not parse as ")
    assert _health(classification_channel) == SERVING


def test_small_request_methods_refuse_a_large_body_and_others_take_it(classification_channel) -> None:
    name = b"a" * (100 << 10)  # a 100 KiB service name: over SMALL_REQUEST_BYTES, well under the server's limit
    body = health_pb2.HealthCheckRequest(service=name.decode()).SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        classification_channel.unary_unary("/grpc.health.v1.Health/Check")(body, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    limit = "/grpc.health.v1.Health/Check's limit of 65536"
    assert err.value.details() == f"a request of {len(body)} bytes is over {limit}"
    with pytest.raises(grpc.RpcError) as err:
        common_pb2_grpc.OperationsStub(classification_channel).GetOperation(
            common_pb2.GetOperationRequest(name=name.decode()), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    x = np.zeros(200 << 10, dtype=np.uint8)  # a 200 KiB chunk: EchoTensor takes the server's limit
    echo = common_pb2_grpc.DiagnosticsStub(classification_channel).EchoTensor
    back = codec.decode_chunks(echo(codec.encode_chunks(x)))
    assert np.array_equal(back, x)


def test_a_reflection_client_hanging_up_is_logged_at_debug(
    classification_channel, caplog: pytest.LogCaptureFixture
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(classification_channel)
    hold = threading.Event()

    def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        hold.wait(30)

    with caplog.at_level(logging.DEBUG, logger="zsc.rpc"):
        replies = stub.ServerReflectionInfo(requests(), timeout=60)
        assert next(replies).list_services_response.service
        time.sleep(0.5)  # the server is back in its request iterator (a cancel before that ends the call unlogged)
        replies.cancel()
        for _ in range(300):  # hang-guard: the server sees the cancel within moments
            if any("client went away" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
        hold.set()
    mine = [r for r in caplog.records if "ServerReflection" in r.getMessage()]
    assert [r.levelno for r in mine] == [logging.DEBUG], [r.getMessage() for r in mine]
    assert not any(r.exc_info for r in mine)


def test_stream_bytes_are_held_as_they_arrive_within_a_server_budget(tmp_path: Path) -> None:
    """A stream that announces a size holds nothing; streams that send are bounded together; the budget is returned
    when a call ends."""
    server = ZscServer("recovery", ServerConfig(data_roots=[tmp_path], max_streamed_bytes=3 << 20))
    port = server.start()
    channel = connect(f"127.0.0.1:{port}")
    budget = server.stream_budget
    try:
        stub = common_pb2_grpc.DiagnosticsStub(channel)
        release = threading.Event()
        x = np.arange(2 << 20, dtype=np.uint8)  # 2 MiB: two 1 MiB chunks

        def held_open():
            yield from codec.encode_chunks(x, 1 << 20)
            release.wait(30)

        first = stub.EchoTensor(held_open(), timeout=60)
        for _ in range(600):  # hang-guard
            if budget.used == 2 << 20:
                break
            time.sleep(0.05)
        assert budget.used == 2 << 20
        with pytest.raises(grpc.RpcError) as err:  # 2 MiB more would pass the 3 MiB budget
            codec.decode_chunks(stub.EchoTensor(codec.encode_chunks(x, 1 << 20), timeout=60))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "of its limit of 3145728" in err.value.details()
        announce = iter([common_pb2.TensorChunk(dtype="uint8", shape=[3 << 20], offset=0, data=b"")])
        release.set()
        assert np.array_equal(codec.decode_chunks(first), x)
        with pytest.raises(grpc.RpcError) as err:
            codec.decode_chunks(stub.EchoTensor(announce, timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # it sent none of the bytes it announced
        assert np.array_equal(codec.decode_chunks(stub.EchoTensor(codec.encode_chunks(x, 1 << 20))), x)
        assert budget.used == 0
    finally:
        channel.close()
        server.stop(0)


def test_operations_per_hour_are_capped_per_client() -> None:
    from zsc.runtime.interceptors import CLIENT

    manager = OperationManager("test", max_concurrent=10, max_per_hour=2, window_s=0.5)
    done = lambda ctx: common_pb2.Status()  # noqa: E731
    try:
        token = CLIENT.set("ipv4:10.0.0.1")
        manager.start("a", done)
        manager.start("a", done)
        with pytest.raises(ResourceExhausted, match=r"ipv4:10.0.0.1 started 2 operations on test within the hour"):
            manager.start("a", done)
        CLIENT.reset(token)
        manager.start("a", done)  # another client has its own count
        time.sleep(0.6)  # the window has passed
        token = CLIENT.set("ipv4:10.0.0.1")
        manager.start("a", done)
        CLIENT.reset(token)
    finally:
        manager.shutdown()
    assert OperationManager("test").max_per_hour == 0  # the manager alone caps nothing; ServerConfig sets 600


def test_mlflow_telemetry_is_off_unless_asked_for(tmp_path: Path) -> None:
    """The zsc entry point writes no $HOME/.config/mlflow/telemetry.json; MLFLOW_DISABLE_TELEMETRY=false turns it on."""
    script = "from zsc.cli.main import main; main(['down']); import mlflow"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "CI", "MLFLOW_DISABLE_TELEMETRY")}
    clean.pop("DO_NOT_TRACK", None)
    for setting, expected in ((None, False), ("false", True)):
        home = tmp_path / f"home-{setting}"
        home.mkdir()
        env = {**clean, "HOME": str(home)} | ({"MLFLOW_DISABLE_TELEMETRY": setting} if setting else {})
        subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=120)
        assert (home / ".config" / "mlflow" / "telemetry.json").exists() == expected, setting
