"""``zsc.client`` against real servers (tiny profile): each function sends what its arguments say and returns plain
Python (dataclasses, numpy arrays, enum names); long calls report progress and end in the operation's result; a
failed operation raises OperationError; a sharded evaluation over two replicas is exactly one replica's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CIFAR10_TEST, SHARED_DATASETS, start_server

from zsc import client
from zsc.client import classification, generative, recovery, synthesis
from zsc.features import FeatureSet

pytestmark = pytest.mark.service
DIM = 32  # the tiny CLIP's embedding width
BASE = ["cat", "dog", "ship"]


def _features(path: Path, names: list[str], per_class: int = 8, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(len(names), DIM, generator=g), dim=1)
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    x = F.normalize(means[labels] + 0.05 * torch.randn(len(labels), DIM, generator=g), dim=1)
    fs = FeatureSet(x, labels, names, F.normalize(torch.randn(len(names), DIM, generator=g), dim=1), {"source": "t"})
    fs.save(path)
    return fs


@pytest.fixture(scope="module")
def recovery_channel(server_for):
    return server_for.channel("recovery")


def test_fit_teacher_recover_align_and_the_operations(recovery_channel, data_root: Path) -> None:
    work = data_root / "client"
    work.mkdir(exist_ok=True)
    _features(work / "train.safetensors", BASE)
    fit = recovery.fit_teacher(recovery_channel, work / "train.safetensors", ["ship", "cat"], work / "teacher.st")
    assert fit.class_names == ["ship", "cat"] and (fit.n_train, fit.dim) == (16, DIM) and fit.train_accuracy == 1.0
    from safetensors.torch import load_file

    teacher = load_file(work / "teacher.st")
    seen: list[tuple[int, int, str]] = []
    result = recovery.recover(
        recovery_channel,
        teacher["weight"],
        fit.class_names,
        work / "virtual.safetensors",
        bias=teacher["bias"],
        metric="linear",
        init_from_teacher=True,
        epochs=10,
        nsample=10,
        num=20,
        progress=lambda done, total, message: seen.append((done, total, message)),
    )
    assert isinstance(result, recovery.Recovery) and result.class_names == ["ship", "cat"]
    assert isinstance(result.mu, np.ndarray) and result.mu.shape == (2, DIM)
    assert len(result.stats.kept_fraction) == 2 and result.stats.mlflow_run_id
    assert seen and seen[-1][0] == seen[-1][1] == 10  # the steps, to the last
    assert FeatureSet.load(Path(result.features_uri)).class_names == ["ship", "cat"]

    aligned = recovery.align(
        recovery_channel,
        result.features_uri,
        ["ship", "cat", "zebra"],
        work / "aligned.safetensors",
        settings={"epochs": 1, "batch_size": 8, "shuffle": None},
    )
    assert (aligned.n_base, aligned.n_novel) == (2, 1) and aligned.residual.shape == (DIM,)

    runs = client.list_operations(recovery_channel)
    assert {"succeeded"} >= {op.state for op in runs} and len(runs) >= 2
    one = client.get_operation(recovery_channel, runs[0].name)
    assert one.done and one.name == runs[0].name

    import grpc

    with pytest.raises(grpc.RpcError) as err:  # text features of another width than the teacher's: refused at once
        recovery.recover(
            recovery_channel, teacher["weight"], ["ship", "cat"], work / "bad.st", text_features=torch.ones(2, 5)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_fit_teacher_refuses_a_class_the_file_lacks(recovery_channel, data_root: Path) -> None:
    import grpc

    path = data_root / "client-refuse.safetensors"
    _features(path, BASE)
    with pytest.raises(grpc.RpcError) as err:
        recovery.fit_teacher(recovery_channel, path, ["cat", "nope"], data_root / "t.st")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'nope'" in err.value.details()


def test_zero_shot_and_a_sharded_evaluation_equal_one_replicas(classification_channel, tmp_path: Path) -> None:
    images = sorted((CIFAR10_TEST / "cat").iterdir())[:2]
    names = ["airplane", "cat", "dog"]
    reply = classification.zero_shot(classification_channel, images, names, top_k=2)
    assert len(reply.top_k) == 2 and reply.probs.shape == (2, 3) and set(reply.top_k[0].labels) <= set(names)

    one = classification.evaluate_zero_shot(classification_channel, CIFAR10_TEST, limit=24, batch_size=8)
    assert one.metrics["n_images"] == 24 and one.confusion.shape == (10, 10) and one.shards is None
    servers = [start_server("classification", [SHARED_DATASETS]) for _ in range(2)]
    try:
        replicas = [client.Replica(f"127.0.0.1:{s.port}") for s in servers]
        sharded = classification.evaluate_zero_shot(replicas, CIFAR10_TEST, limit=24, batch_size=8)
    finally:
        for s in servers:
            s.stop(grace=1)
    assert np.array_equal(sharded.confusion, one.confusion) and sharded.per_class_accuracy == one.per_class_accuracy
    assert len(sharded.mlflow_run_ids) == len(sharded.shards.operations) == 3  # 24 images on the 8-image grid


def test_extract_features(classification_channel, data_root: Path) -> None:
    out = data_root / "client-features.safetensors"
    result = classification.extract_features(classification_channel, CIFAR10_TEST, out, limit=10)
    assert result.n_images == 10 and len(result.class_names) == 10 and Path(result.features_uri) == out.resolve()


def test_synthesis_tricks_dataset_and_preview(server_for, data_root: Path) -> None:
    channel = server_for.channel("synthesis")
    tricks = synthesis.list_tricks(channel)
    assert "multidomain" in {t.name for t in tricks.tricks} and tricks.default_steps > 0
    assert all(t.kind in ("prompt", "guidance", "mix") for t in tricks.tricks)
    out = data_root / "client-synthetic"
    options = {"resolution": 32, "generation": {"steps": 2}, "batch_size": 2}
    done = synthesis.generate_dataset(
        channel, ["cat", synthesis.ClassSpec("crane", "crane, a bird")], 2, out, **options
    )
    assert (done.total, done.generated, done.skipped) == (4, 4, 0) and len(done.mlflow_run_ids) == 1
    preview = list(synthesis.generate_images(channel, ["cat"], 2, resolution=32, generation={"steps": 2}, batch_size=2))
    assert [p.job.file for p in preview] == ["cat/00000.png", "cat/00001.png"]
    assert preview[0].data == (out / "cat" / "00000.png").read_bytes()  # same plan, same batches, same bytes


def test_generator_features_gzsl_and_evaluation(server_for, data_root: Path) -> None:
    channel = server_for.channel("generative")
    work = data_root / "client-gzsl"
    work.mkdir(exist_ok=True)
    names = [f"class {i}" for i in range(6)]
    base = _features(work / "base.safetensors", names[:4], per_class=10)
    # the base file lists every class's text features: the novel ones have no samples
    FeatureSet(base.features, base.labels, names, torch.randn(6, DIM), {}).save(work / "base.safetensors")
    gen = generative.train_generator(
        channel, work / "base.safetensors", "clswgan", settings={"epochs": 2, "hidden_dim": 32}, seed=1
    )
    assert gen.kind == "clswgan" and gen.model.model_uri.startswith("models:/") and len(gen.trained_classes) == 4
    novel = generative.generate_features(channel, gen.model.model_uri, names[4:], 5, work / "novel.safetensors")
    assert novel.n_features == 10 and novel.generator.model_uri == gen.model.model_uri
    got_names, streamed = generative.stream_features(channel, gen.model.model_uri, names[4:], 5, seed=0)
    assert got_names == names[4:] and streamed.shape == (10, DIM)
    gzsl = generative.train_gzsl(
        channel, work / "base.safetensors", novel=novel.features_uri, settings={"epochs": 2}, seed=0
    )
    assert gzsl.calibration is None and sorted(gzsl.novel_indices) == [4, 5]
    _features(work / "test.safetensors", names, per_class=3, seed=2)
    evaluation = generative.evaluate_gzsl(channel, gzsl.model.model_uri, work / "test.safetensors")
    assert 0.0 <= evaluation.gzsl.harmonic <= 1.0 and evaluation.support == [3] * 6
    assert evaluation.classifier.model_uri == gzsl.model.model_uri
