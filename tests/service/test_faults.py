"""Faults: SIGKILL a service in the middle of a long operation, restart it and rerun; expired deadlines; the startup
sweep of MLflow runs that a killed server left RUNNING.

Each kill test starts `zsc serve <service>` in a child process, starts a long operation there, SIGKILLs the child as
soon as the operation reports progress, and checks that nothing half-written is left and that the job's MLflow run
is still RUNNING (nobody could end it). A fresh server of the same service (in this process) then ends that run as
FAILED at startup, and the same request run again produces complete outputs equal to the core's. Sizes are small so
each test stays around 20 s on 2 CPU cores; the killed jobs are sized to run for seconds past the kill.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from safetensors.torch import load_file

from zsc import codec, registry, tracking
from zsc.classification.v1 import classification_pb2 as cls_pb
from zsc.classification.v1 import classification_pb2_grpc as cls_grpc
from zsc.classification.v1 import downstream_pb2 as ds_pb
from zsc.classification.v1 import downstream_pb2_grpc as ds_grpc
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.errors import Cancelled
from zsc.features import FeatureSet
from zsc.generative.v1 import generative_pb2 as gen_pb
from zsc.generative.v1 import generative_pb2_grpc as gen_grpc
from zsc.recovery.v1 import recovery_pb2 as rec_pb
from zsc.recovery.v1 import recovery_pb2_grpc as rec_grpc
from zsc.runtime.client import connect, unpack, wait_until_serving, watch
from zsc.runtime.server import ZscServer

pytestmark = [pytest.mark.service, pytest.mark.usefixtures("one_torch_thread")]
RUNNING_STATES = (common_pb2.OperationMetadata.QUEUED, common_pb2.OperationMetadata.RUNNING)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The session's MLflow store exists before any child server opens it: two processes must not create its schema.
    tracking.experiment_id("zsc-faults")
    return tmp_path_factory.mktemp("faults")


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def spawn(
    service: str, root: Path, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, grpc.Channel]:
    """`zsc serve <service>` in a child process (its MLflow store is this session's); returns it once SERVING."""
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zsc.cli.main", "serve", service, "--port", "0", "--data-root", str(root)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        )
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith(f"{service} on "):
        proc.kill()
        pytest.fail(f"{service} did not start: {line!r}; log: {log.read_text()[-2000:]}")
    channel = connect(line.removeprefix(f"{service} on "))
    wait_until_serving(channel, timeout=120)
    return proc, channel


def kill_mid_job(
    proc: subprocess.Popen,
    channel: grpc.Channel,
    op: common_pb2.Operation,
    ready: Callable[[common_pb2.Operation], bool] = lambda u: u.metadata.done_units > 0,
) -> common_pb2.Operation:
    """SIGKILL the server at the first update of ``op`` that is ``ready`` (and has its MLflow run); return it."""
    stream = common_pb2_grpc.OperationsStub(channel).WatchOperation(
        common_pb2.WatchOperationRequest(name=op.name), timeout=300
    )
    last = op
    try:
        for last in stream:
            if last.done or (last.metadata.mlflow_run_id and ready(last)):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stream.cancel()
        channel.close()
        if proc.poll() is None:
            proc.kill()
    assert not last.done, f"the job ended ({last.metadata.state}) before the kill"
    assert last.metadata.state in RUNNING_STATES and last.metadata.mlflow_run_id
    return last


def restart_and_sweep(service: str, root: Path, run_id: str) -> ZscServer:
    """A fresh server of the service ends the killed job's run as FAILED at startup (it was RUNNING until then)."""
    client = tracking.client()
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody ended it: the sweep below must
    server = start_server(service, [root])
    assert server.swept.wait(120)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run_id in server.swept_runs
    assert "is gone" in run.data.tags[tracking.ENDED_BY_TAG]
    return server


# ------------------------------------------------------------------------------------------------------- recovery
def _teacher(rows: int = 6, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(text features, cosine teacher weights) in the tiny CLIP's width."""
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(rows, dim, generator=g), dim=1)
    return text, text + 0.3 * torch.randn(rows, dim, generator=g) / math.sqrt(dim)


@pytest.mark.slow
def test_recovery_sigkill_leaves_no_file_and_a_rerun_equals_the_core(root: Path, tmp_path: Path) -> None:
    from zsc_recovery.core.recover import RecoveryConfig, recover, teacher_from_weights

    text, weight = _teacher()
    names = ["cat", "dog", "bird", "frog", "truck", "ship"]
    settings = dict(epochs=400, nsample=20, num=40, seed=5)  # ~1.5 s of steps; progress comes every 10
    out = root / "recovery" / "virtual.safetensors"
    request = rec_pb.RecoverRequest(
        teacher=rec_pb.Teacher(weight=codec.encode(weight)),
        class_names=names,
        text_features=codec.encode(text),
        output_uri=str(out),
        **settings,
    )
    proc, channel = spawn("recovery", root, tmp_path / "recovery.log")
    killed = kill_mid_job(proc, channel, rec_grpc.RecoveryStub(channel).Recover(request))
    assert 0 < killed.metadata.done_units < 400
    assert not out.exists() and not list(out.parent.glob("*.tmp"))  # no file, and no half-written one

    server = restart_and_sweep("recovery", root, killed.metadata.mlflow_run_id)
    try:
        channel = connect(f"127.0.0.1:{server.port}")
        result = unpack(watch(channel, rec_grpc.RecoveryStub(channel).Recover(request)), rec_pb.RecoverResult)
        assert _serving(channel)
        channel.close()
    finally:
        server.stop(grace=1)
    assert result.features_uri == str(out) and result.stats.steps_run == 400
    saved = FeatureSet.load(out)  # complete: every tensor, the header and the checks of a feature set
    core = recover(teacher_from_weights(weight), text, RecoveryConfig(**settings))
    torch.testing.assert_close(saved.features, core.features.float(), rtol=0, atol=1e-6)
    assert torch.equal(saved.labels, core.labels) and saved.class_names == names
    assert tracking.client().get_run(result.stats.mlflow_run_id).info.status == "FINISHED"


# ----------------------------------------------------------------------------------------------------- generative
def _features_file(path: Path) -> FeatureSet:
    """6 classes (5 with samples) of D = 24 features conditioned on D_t = 7 text features."""
    g = torch.Generator().manual_seed(3)
    text = torch.randn(6, 7, generator=g)
    means = F.normalize(torch.tanh(text @ torch.randn(7, 24, generator=g)), dim=1)
    labels = torch.arange(5).repeat_interleave(12)
    features = F.normalize(means[labels] + 0.1 * torch.randn(len(labels), 24, generator=g), dim=1)
    data = FeatureSet(features, labels, [f"class {i}" for i in range(6)], text)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save(path)
    return data


@pytest.mark.slow
def test_generative_sigkill_registers_nothing_and_a_rerun_equals_the_core(root: Path, tmp_path: Path) -> None:
    from zsc_generative import models

    data = _features_file(root / "generative" / "train.safetensors")
    name = f"zsc-faults-generator-{uuid.uuid4().hex[:8]}"
    settings = gen_pb.GeneratorSettings(epochs=60, hidden_dim=32, noise_dim=8, lr=1e-3, batch_size=16)
    request = gen_pb.TrainGeneratorRequest(
        features_uri=str(root / "generative" / "train.safetensors"),
        kind=gen_pb.CLSWGAN,
        settings=settings,
        clswgan=gen_pb.ClswganSettings(cls_epochs=2),
        seed=4,
        registered_model_name=name,
    )
    proc, channel = spawn("generative", root, tmp_path / "generative.log")
    killed = kill_mid_job(proc, channel, gen_grpc.GenerativeStub(channel).TrainGenerator(request))
    assert 0 < killed.metadata.done_units < 60
    client = tracking.client()
    assert list(client.search_model_versions(f"name = '{name}'")) == []  # nothing half-registered

    server = restart_and_sweep("generative", root, killed.metadata.mlflow_run_id)
    try:
        channel = connect(f"127.0.0.1:{server.port}")
        op = watch(channel, gen_grpc.GenerativeStub(channel).TrainGenerator(request))
        result = unpack(op, gen_pb.TrainGeneratorResult)
        assert _serving(channel)
        channel.close()
    finally:
        server.stop(grace=1)
    assert result.model.version == "1" and result.epochs_run == 60  # the killed job registered no version
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert client.get_run(op.metadata.mlflow_run_id).info.status == "FINISHED"
    folder = Path(tmp_path / "download")
    local = registry.fetch(registry.resolve(result.model.model_uri), folder)
    stored = load_file(local / models.WEIGHTS_FILE)
    kind = models.KINDS["clswgan"]
    config = kind.config_cls(seed=4, epochs=60, hidden_dim=32, noise_dim=8, lr=1e-3, batch_size=16, cls_epochs=2)
    core = kind.train(data, config, device="cpu")
    assert stored.keys() == core.state_dict.keys()
    for key, value in core.state_dict.items():
        torch.testing.assert_close(stored[key], value.cpu(), rtol=0, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------------------ classification (downstream)
def _image_folder(root: Path, classes: int = 2, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(60 + 120 * c + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            (root / f"class{c}" / f"{i:05d}.png").write_bytes(buffer.getvalue())
    return root


@pytest.mark.slow
def test_downstream_sigkill_registers_nothing_and_a_rerun_serves_a_complete_model(root: Path, tmp_path: Path) -> None:
    folder = _image_folder(root / "downstream")
    name = f"zsc-faults-downstream-{uuid.uuid4().hex[:8]}"
    request = ds_pb.TrainClassifierRequest(
        data_uri=str(folder), epochs=5, batch_size=4, lr=1e-3, registered_model_name=name, seed=0
    )
    proc, channel = spawn("classification", root, tmp_path / "classification.log")
    killed = kill_mid_job(proc, channel, ds_grpc.DownstreamStub(channel).TrainClassifier(request))
    assert 0 < killed.metadata.done_units < 5
    client = tracking.client()
    assert list(client.search_model_versions(f"name = '{name}'")) == []

    server = restart_and_sweep("classification", root, killed.metadata.mlflow_run_id)
    try:
        channel = connect(f"127.0.0.1:{server.port}")
        result = unpack(
            watch(channel, ds_grpc.DownstreamStub(channel).TrainClassifier(request)), ds_pb.TrainClassifierResult
        )
        images = [common_pb2.Image(data=p.read_bytes()) for p in sorted(folder.rglob("*.png"))[:3]]
        reply = ds_grpc.DownstreamStub(channel).Predict(ds_pb.PredictRequest(model_uri=result.model_uri, images=images))
        assert _serving(channel)
        channel.close()
    finally:
        server.stop(grace=1)
    assert result.model_uri == f"models:/{name}/1"  # the killed job registered no version
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    probs = codec.decode(reply.probs)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert list(reply.class_names) == ["class0", "class1"] and reply.model_version == "1"


# ------------------------------------------------------------------------------------------------------- the sweep
def test_sweep_fails_only_runs_of_dead_processes_of_this_service_on_this_host() -> None:
    experiment = f"zsc-faults-sweep-{uuid.uuid4().hex[:8]}"
    runs: dict[str, tracking.Run] = {}
    owners = {"dead": "recovery", "live": "recovery", "other_service": "synthesis", "host": "recovery"}
    for key, service in owners.items():
        with tracking.owned_by(service):
            runs[key] = tracking.Run(experiment, key)
    with tracking.owned_by("recovery"):
        assert tracking.owner_tags()[tracking.OWNER_PROCESS_TAG] == tracking.process_identity(os.getpid())
    unowned = tracking.Run(experiment, "unowned")  # made outside any job: no owner tags, never swept
    assert tracking.OWNER_SERVICE_TAG not in unowned.client.get_run(unowned.id).data.tags
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead_owner = f"{gone.pid}:1"  # a pid that exited (or one reused by a process started at another time)
    runs["dead"].set_tags({tracking.OWNER_PROCESS_TAG: dead_owner})
    runs["other_service"].set_tags({tracking.OWNER_PROCESS_TAG: dead_owner})
    runs["host"].set_tags({tracking.OWNER_PROCESS_TAG: dead_owner, tracking.OWNER_HOST_TAG: "another-host"})

    assert runs["dead"].id in tracking.fail_orphaned_runs("recovery")
    status = {key: run.client.get_run(run.id).info.status for key, run in runs.items()}
    assert status == {"dead": "FAILED", "live": "RUNNING", "other_service": "RUNNING", "host": "RUNNING"}
    assert unowned.client.get_run(unowned.id).info.status == "RUNNING"
    for run in [*runs.values(), unowned]:
        run.end()


# ----------------------------------------------------------------------------------------------------- deadlines
def test_an_expired_deadline_stops_the_core(classification_server, classification_channel, monkeypatch) -> None:
    """ZeroShot runs on the RPC thread: its deadline reaches the Diffusion Classifier, which stops between batches."""
    from zsc_classification.core.diffusion_classifier import DiffusionClassifier

    stub = cls_grpc.ClassificationStub(classification_channel)
    rng = np.random.default_rng(1)
    images = []
    for _ in range(8):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(common_pb2.Image(data=buffer.getvalue()))

    def request(n_samples: int, n_images: int) -> cls_pb.ZeroShotRequest:
        options = cls_pb.DiffusionOptions(
            stages=[cls_pb.DiffusionStage(n_samples=n_samples, to_keep=1)], batch_size=1, seed=0
        )
        return cls_pb.ZeroShotRequest(
            method=cls_pb.DIFFUSION,
            class_names=["cat", "dog"],
            prompts=cls_pb.PromptSpec(template_set="single"),
            images=images[:n_images],
            diffusion=options,
        )

    stub.ZeroShot(request(1, 1), timeout=300)  # loads the diffusion model, so the timed call below only computes
    real = DiffusionClassifier.classify
    outcome: dict[str, object] = {"polls": 0}
    finished = threading.Event()

    def spy(self, *args, should_stop=None, **kwargs):
        def counting() -> bool:
            outcome["polls"] += 1
            return should_stop()

        try:
            return real(self, *args, should_stop=counting, **kwargs)
        except BaseException as err:
            outcome["error"] = err
            raise
        finally:
            finished.set()

    monkeypatch.setattr(DiffusionClassifier, "classify", spy)
    planned = 8 * 2 * 500  # images x classes x timesteps, one UNet pass per batch
    with pytest.raises(grpc.RpcError) as err:
        stub.ZeroShot(request(500, 8), timeout=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert finished.wait(120), "the core kept computing after the deadline"
    assert isinstance(outcome.get("error"), Cancelled)
    assert 0 < outcome["polls"] < planned
    assert _serving(classification_channel)


# ----------------------------------------------------------------------------------------------- memory under a burst
MiB = 1 << 20


def vm_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def health_bodies(channel: grpc.Channel, count: int, nbytes: int, parallel: int) -> set[str]:
    """``count`` health checks whose body is a ``nbytes`` service name (the port needs no token); their codes."""
    body = b"\n" + _varint(nbytes) + b"a" * nbytes  # HealthCheckRequest.service, built without a 63 MiB str

    def one(_: int) -> str:
        try:
            channel.unary_unary("/grpc.health.v1.Health/Check")(body, timeout=120)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name

    with futures.ThreadPoolExecutor(parallel) as pool:
        return set(pool.map(one, range(count)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def stalled_streams(channel: grpc.Channel, count: int, announced: int) -> tuple[list, threading.Event]:
    """``count`` EchoTensor streams that announce ``announced`` bytes and then send nothing until released."""
    release = threading.Event()

    def chunks() -> Iterator[common_pb2.TensorChunk]:
        yield common_pb2.TensorChunk(dtype="uint8", shape=[announced], offset=0, data=b"")
        release.wait(120)

    echo = common_pb2_grpc.DiagnosticsStub(channel).EchoTensor
    return [echo(chunks(), timeout=180) for _ in range(count)], release


def memory_burst(root: Path, log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """A server's RSS when warm, at its peak during a burst of 40 health checks of 63 MiB each (8 at a time) and two
    EchoTensor streams that announce 511 MiB and stall, while those streams are open, and once the burst is over."""
    proc, channel = spawn("recovery", root, log, env)  # zsc's client limit of 64 MiB takes the 63 MiB bodies
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], vm_rss(proc.pid))
            time.sleep(0.05)

    try:
        assert health_bodies(channel, 4, 63 * MiB, 4) == {"RESOURCE_EXHAUSTED"}  # warm-up: the allocator's arenas
        time.sleep(1)
        warm = vm_rss(proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        codes = health_bodies(channel, 40, 63 * MiB, 8)
        calls, release = stalled_streams(channel, 2, 511 * MiB)
        time.sleep(2)  # both streams have announced their size
        during = vm_rss(proc.pid)
        for _ in range(100):  # the health burst's buffers are trimmed by the server in its own time (a loaded machine)
            if during <= 1.1 * warm:
                break
            time.sleep(0.1)
            during = vm_rss(proc.pid)
        release.set()
        stream_codes = set()
        for call in calls:
            try:
                list(call)
            except grpc.RpcError as err:
                stream_codes.add(err.code().name)
        after = vm_rss(proc.pid)
        for _ in range(300):  # hang-guard: at most 30 s for the heap to be given back
            if after <= 1.1 * warm:
                break
            time.sleep(0.1)
            after = vm_rss(proc.pid)
        sampling.set()
        sampler.join()
        return {
            "warm_mb": round(warm / MiB, 1),
            "peak_mb": round(peak[0] / MiB, 1),
            "streams_open_mb": round(during / MiB, 1),
            "after_mb": round(after / MiB, 1),
            "after_pct": round(100 * (after - warm) / warm, 1),
            "health_codes": sorted(codes),
            "stream_codes": sorted(stream_codes),
        }
    finally:
        channel.close()
        proc.terminate()
        proc.wait(60)


@pytest.mark.slow
def test_rss_returns_to_its_warm_level_after_a_burst(root: Path, tmp_path: Path) -> None:
    """Health checks need no token, so anyone who reaches the port can send them: 40 of 63 MiB (each refused by the
    64 KiB limit of health requests, after gRPC has read it) and two streams announcing 511 MiB leave the server within
    10% of its warm RSS. Without malloc_trim (ZSC_MALLOC_TRIM=0) the same burst left it 21% above in one run, 50% in
    another (bench/reliability.py measures both)."""
    figures = memory_burst(root, tmp_path / "serve.log")
    assert figures["health_codes"] == ["RESOURCE_EXHAUSTED"]
    assert figures["stream_codes"] == ["INVALID_ARGUMENT"]  # they ended without the bytes they announced
    assert figures["streams_open_mb"] <= 1.1 * figures["warm_mb"], figures  # an announcement holds no memory
    assert figures["after_mb"] <= 1.1 * figures["warm_mb"], figures
    summary = os.environ.get("ZSC_MEMORY_SUMMARY")
    if summary:
        untrimmed = memory_burst(root, tmp_path / "untrimmed.log", {"ZSC_MALLOC_TRIM": "0"})
        Path(summary).write_text(json.dumps({"trimmed": figures, "untrimmed": untrimmed}, indent=2))
