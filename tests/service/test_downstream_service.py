"""Downstream service over real gRPC on the tiny profile: train on a synthetic-like ImageFolder, register, evaluate on
real CIFAR-10 test images, promote, predict through the alias; selection never touches the test set; bad input."""

from __future__ import annotations

import builtins
import io
import json
import pathlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CIFAR10_TEST, cancel_and_wait
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from zsc import codec, registry, tracking
from zsc.classification.v1 import downstream_pb2 as pb
from zsc.classification.v1 import downstream_pb2_grpc as pb_grpc
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.errors import NotFound
from zsc.runtime.client import OperationError, unpack, watch

pytestmark = pytest.mark.service
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 8


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _synthetic_folder(root: Path, classes: list[str] = CLASSES, per_class: int = PER_CLASS) -> Path:
    """What the synthesis service writes: <root>/<class>/<index:05d>.png, manifest.jsonl and request.json."""
    rng = np.random.default_rng(0)
    records = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        hue = np.array([(c * 70) % 256, (c * 150) % 256, (c * 30) % 256], dtype=float)
        for i in range(per_class):
            image = np.clip(hue + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            (root / name / f"{i:05d}.png").write_bytes(_png(image))
            trick = "multidomain" if i % 2 else "random_guidance"
            records.append(
                {
                    "class": name, "index": i, "prompt": f"a photo of a {name}", "trick": trick,
                    "domain": "photo" if i % 2 else None, "guidance": 1.0 + i / 2, "seed": i, "steps": 4,
                    "scheduler": "ddim", "model": "tiny:zsc-tiny-sd", "size": 32, "file": f"{name}/{i:05d}.png",
                }
            )  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "request.json").write_text(json.dumps({"fingerprint": "test-fingerprint", "request": {"seed": 0}}))
    return root


class OpenedFiles:
    """Records every file path opened through pathlib or open() while active (the server runs in this process)."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()

    @contextmanager
    def recording(self) -> Iterator[OpenedFiles]:
        real_open, real_path_open, real_read = builtins.open, pathlib.Path.open, pathlib.Path.read_bytes
        paths = self.paths

        def record(target: object) -> None:
            if isinstance(target, str | pathlib.PurePath):
                paths.add(Path(target).resolve())

        def spy_open(file, *args, **kwargs):
            record(file)
            return real_open(file, *args, **kwargs)

        def spy_path_open(self, *args, **kwargs):
            record(self)
            return real_path_open(self, *args, **kwargs)

        def spy_read(self):
            record(self)
            return real_read(self)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(builtins, "open", spy_open)
            mp.setattr(pathlib.Path, "open", spy_path_open)
            mp.setattr(pathlib.Path, "read_bytes", spy_read)
            yield self

    def under(self, root: Path) -> list[Path]:
        return sorted(p for p in self.paths if p.is_relative_to(root.resolve()))


def _serving(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    return all(
        stub.Check(health_pb2.HealthCheckRequest(service=s)).status == health_pb2.HealthCheckResponse.SERVING
        for s in ("", "zsc.classification.v1.Downstream")
    )


@pytest.fixture(scope="module")
def syn_folder(data_root: Path) -> Path:
    return _synthetic_folder(data_root / "downstream-syn")


@pytest.fixture(scope="module")
def trained(classification_channel, syn_folder: Path) -> dict:
    """One model trained over gRPC (the tiny profile's resnet18), with every file the job opened recorded."""
    name = f"zsc-test-downstream-{uuid.uuid4().hex[:8]}"
    stub = pb_grpc.DownstreamStub(classification_channel)
    request = pb.TrainClassifierRequest(
        data_uri=str(syn_folder), epochs=2, batch_size=16, lr=1e-3, registered_model_name=name, seed=0
    )
    updates: list[common_pb2.Operation] = []
    opened = OpenedFiles()
    with opened.recording():
        op = watch(classification_channel, stub.TrainClassifier(request), updates.append)
    return {"name": name, "result": unpack(op, pb.TrainClassifierResult), "updates": updates, "opened": opened}


def test_downstream_service_is_served_and_reflected(classification_channel) -> None:
    assert _serving(classification_channel)


@pytest.mark.slow
def test_training_reports_progress_registers_and_records_lineage(trained: dict, syn_folder: Path) -> None:
    result, name = trained["result"], trained["name"]
    assert result.model_uri == f"models:/{name}/1" and result.model_version == "1"
    assert list(result.class_names) == CLASSES and result.arch == "resnet18" and result.image_size == 32
    assert (result.n_train, result.n_val) == (70, 10)  # round(8 * 0.1) = 1 image per class held out
    assert result.best_epoch in (1, 2) and 0.0 <= result.best_val_accuracy <= 1.0
    assert result.dataset_hash.startswith("sha256:") and result.train_images_per_second > 0

    epochs = [u for u in trained["updates"] if u.metadata.done_units > 0 and "val_accuracy" in u.metadata.metrics]
    assert {u.metadata.done_units for u in epochs} >= {1, 2}
    assert all(u.metadata.total_units == 2 and u.metadata.unit == "epochs" for u in trained["updates"])
    assert {"loss", "val_accuracy"} <= set(epochs[-1].metadata.metrics)

    client = tracking.client()
    run = client.get_run(result.mlflow_run_id)
    assert client.get_experiment(run.info.experiment_id).name == "zsc-downstream"
    assert run.info.status == "FINISHED"
    val_history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in val_history) == [1, 2]
    best = max(val_history, key=lambda m: m.value)
    assert result.best_val_accuracy == pytest.approx(best.value)
    assert run.data.params["arch"] == "resnet18" and run.data.params["weight_decay"] == "0.9"
    version = client.get_model_version(name, "1")
    for tags in (run.data.tags, version.tags):
        assert tags["zsc.dataset.uri"] == str(syn_folder) and tags["zsc.dataset.hash"] == result.dataset_hash
        assert tags["zsc.git_commit"] == tracking.git_commit() and tags["zsc.profile"] == "tiny"
        assert tags["zsc.seed"] == "0" and tags["zsc.synthesis.fingerprint"] == "test-fingerprint"
        assert json.loads(tags["zsc.synthesis.tricks"]) == {"multidomain": 40, "random_guidance": 40}
        assert tags["zsc.synthesis.guidance_min"] == "1" and tags["zsc.synthesis.guidance_max"] == "4.5"
        assert tags["zsc.synthesis.model"] == "tiny:zsc-tiny-sd" and tags["zsc.synthesis.scheduler"] == "ddim"


@pytest.mark.slow
@pytest.mark.realdata
def test_train_evaluate_promote_predict_and_never_read_the_test_set(
    trained: dict, classification_channel, syn_folder: Path
) -> None:
    name = trained["name"]
    stub = pb_grpc.DownstreamStub(classification_channel)
    # Selection used only the synthetic split: training opened the training images and not one test file.
    opened: OpenedFiles = trained["opened"]
    assert len(opened.under(syn_folder)) >= len(CLASSES) * PER_CLASS
    assert opened.under(CIFAR10_TEST) == []

    recorder = OpenedFiles()  # the same spy does see the test set when Evaluate reads it: the check above can fail
    with recorder.recording():
        op = stub.Evaluate(
            pb.EvaluateModelRequest(model_uri=f"models:/{name}/1", data_uri=str(CIFAR10_TEST), limit=200)
        )
        evaluation = unpack(watch(classification_channel, op), pb.ModelEvaluation)
    assert len(recorder.under(CIFAR10_TEST)) == 200

    assert evaluation.n_images == 200 and list(evaluation.class_names) == CLASSES
    confusion = codec.decode(evaluation.confusion)
    assert confusion.shape == (10, 10) and confusion.sum() == 200 and (confusion.sum(1) == 20).all()
    assert evaluation.top1 == pytest.approx(np.trace(confusion) / 200)
    assert evaluation.macro_accuracy == pytest.approx(np.mean(evaluation.per_class_accuracy))
    client = tracking.client()
    tags = client.get_model_version(name, "1").tags
    assert float(tags["real_test.top1"]) == pytest.approx(evaluation.top1, abs=1e-6)
    assert float(tags["real_test.macro_accuracy"]) == pytest.approx(evaluation.macro_accuracy, abs=1e-6)
    assert tags["real_test.dataset"] == str(CIFAR10_TEST) and tags["real_test.run_id"] == evaluation.mlflow_run_id
    artifacts = {a.path for a in client.list_artifacts(evaluation.mlflow_run_id)}
    assert {"confusion_matrix.png", "per_class_accuracy.png", "confusion.json"} <= artifacts

    with pytest.raises(registry.PromotionRefused):
        registry.promote(name, "1", "champion", [f"real_test.top1>{evaluation.top1 + 0.01}"])
    registry.promote(name, "1", "champion", [f"real_test.top1>={evaluation.top1}"])

    images = [(CIFAR10_TEST / c / "0000.jpg").read_bytes() for c in ("cat", "ship", "truck")]
    request = pb.PredictRequest(
        model_uri=f"models:/{name}@champion", images=[common_pb2.Image(data=b, mime="image/jpeg") for b in images]
    )
    reply = stub.Predict(request)
    assert reply.registered_model_name == name and reply.model_version == "1"
    assert [len(p.labels) for p in reply.predictions] == [5, 5, 5]
    probs = codec.decode(reply.probs, "torch")
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert [p.indices[0] for p in reply.predictions] == probs.argmax(-1).tolist()
    assert stub.Predict(request).probs.data == reply.probs.data  # cached model, deterministic answer

    # The registered artifact is a plain MLflow pyfunc model: it predicts the same thing outside zsc's service.
    local = registry.download(registry.resolve(f"models:/{name}@champion"), Path(syn_folder.parent / "dl"))
    frame = registry.load_pyfunc(local).predict(pd.DataFrame({"image": images}))
    assert list(frame["label"]) == [p.labels[0] for p in reply.predictions]
    np.testing.assert_allclose(np.stack(frame["probabilities"]), probs.numpy(), atol=1e-5)

    text, _ = registry.review(name)
    assert "| aliases | @champion |" in text and "real test: top1" in text


BAD_TRAIN = {
    "unknown arch": ({"arch": "resnet-eighteen"}, "timm.list_models"),
    "no class folders": ({"data": "empty"}, "no class folders"),
    "empty class folder": ({"data": "empty-class"}, "without images"),
    "one image in a class": ({"data": "single"}, "single image"),
    "not a directory": ({"data": "file.txt"}, "not a directory"),
    "val fraction": ({"val_fraction": 0.9}, "val fraction"),
    "negative epochs": ({"epochs": -1}, ">= 0"),
    "bad model name": ({"registered_model_name": "a/b"}, "registered model name"),
    "outside the data root": ({"data": "/etc"}, "outside the data root"),
}


@pytest.fixture(scope="module")
def bad_folders(data_root: Path) -> Path:
    root = data_root / "downstream-bad"
    (root / "empty").mkdir(parents=True)
    _synthetic_folder(root / "empty-class", ["cat", "dog"], 3)
    (root / "empty-class" / "horse").mkdir()
    _synthetic_folder(root / "single", ["cat", "dog"], 3)
    for extra in (root / "single" / "dog").glob("0000[12].png"):
        extra.unlink()
    (root / "file.txt").write_text("not a dataset")
    corrupt = _synthetic_folder(root / "corrupt", ["cat", "dog"], 3)
    for png in corrupt.rglob("*.png"):
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return root


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_bad_training_requests_get_invalid_argument(
    case: str, classification_channel, bad_folders: Path, syn_folder: Path
) -> None:
    fields, message = BAD_TRAIN[case]
    fields = dict(fields)
    data = fields.pop("data", None)
    uri = str(syn_folder) if data is None else data if data.startswith("/") else str(bad_folders / data)
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.DownstreamStub(classification_channel).TrainClassifier(
            pb.TrainClassifierRequest(data_uri=uri, **{"epochs": 1, **fields})
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details() and "\n" not in err.value.details()
    assert _serving(classification_channel)


def test_missing_dataset_is_not_found(classification_channel, data_root: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.DownstreamStub(classification_channel).TrainClassifier(
            pb.TrainClassifierRequest(data_uri=str(data_root / "no-such-dataset"))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_unreadable_images_fail_the_operation_naming_the_file(classification_channel, bad_folders: Path) -> None:
    stub = pb_grpc.DownstreamStub(classification_channel)
    op = stub.TrainClassifier(pb.TrainClassifierRequest(data_uri=str(bad_folders / "corrupt"), epochs=1))
    with pytest.raises(OperationError) as err:
        watch(classification_channel, op)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ".png cannot be decoded" in str(err.value) and "\n" not in str(err.value)
    run = tracking.client().get_run(err.value.operation.metadata.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert _serving(classification_channel)


@pytest.fixture
def empty_weight_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty hub and torch.hub caches, and no hub downloads: only pip-packaged weights can load."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    monkeypatch.delenv("ZSC_HUB_ONLINE", raising=False)


@pytest.mark.usefixtures("empty_weight_caches")
def test_pretrained_weights_missing_offline_is_unavailable(classification_channel, syn_folder: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.DownstreamStub(classification_channel).TrainClassifier(
            pb.TrainClassifierRequest(data_uri=str(syn_folder), arch="resnet18", pretrained=True)
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "resnet18" in err.value.details() and "not cached" in err.value.details()
    assert _serving(classification_channel)


def test_cancelled_training_ends_cancelled_and_registers_nothing(classification_channel, syn_folder: Path) -> None:
    name = f"zsc-test-cancel-{uuid.uuid4().hex[:8]}"
    op = pb_grpc.DownstreamStub(classification_channel).TrainClassifier(
        pb.TrainClassifierRequest(
            data_uri=str(syn_folder), arch="test_byobnet", epochs=500, batch_size=4, registered_model_name=name
        )
    )
    operations = common_pb2_grpc.OperationsStub(classification_channel)
    stream = operations.WatchOperation(common_pb2.WatchOperationRequest(name=op.name))
    for update in stream:  # cancel once it trains: mid-epoch of a 500-epoch job
        if update.metadata.message == "training" or update.metadata.done_units > 0:
            break
    stream.cancel()
    final = cancel_and_wait(classification_channel, op)
    assert final.metadata.done_units < 500
    assert tracking.client().get_run(final.metadata.mlflow_run_id).info.status == "KILLED"
    with pytest.raises(NotFound):
        registry.resolve(f"models:/{name}/1")
    assert _serving(classification_channel)


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("models:/no-such-model/1", grpc.StatusCode.NOT_FOUND),
        ("models:/no-such-model@champion", grpc.StatusCode.NOT_FOUND),
        ("runs:/0123456789abcdef0123456789abcdef/model", grpc.StatusCode.NOT_FOUND),
        ("no-scheme", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_unknown_model_uris(uri: str, code: grpc.StatusCode, classification_channel, syn_folder: Path) -> None:
    stub = pb_grpc.DownstreamStub(classification_channel)
    image = common_pb2.Image(data=(syn_folder / "cat" / "00000.png").read_bytes())
    for call in (
        lambda: stub.Predict(pb.PredictRequest(model_uri=uri, images=[image])),
        lambda: stub.Evaluate(pb.EvaluateModelRequest(model_uri=uri, data_uri=str(syn_folder))),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code and "\n" not in err.value.details()
    assert _serving(classification_channel)


@pytest.mark.slow
def test_bad_inputs_against_a_trained_model(trained: dict, classification_channel, bad_folders: Path) -> None:
    stub = pb_grpc.DownstreamStub(classification_channel)
    uri = f"models:/{trained['name']}/1"
    with pytest.raises(grpc.RpcError) as err:  # class folders differ from the model's ten classes
        stub.Evaluate(pb.EvaluateModelRequest(model_uri=uri, data_uri=str(bad_folders / "single")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the model's 10 classes do not match" in str(
        err.value.details()
    )
    good = _png(np.zeros((32, 32, 3), np.uint8))
    batch = [good, b"\x89PNG\r\n\x1a\n garbage", good]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model_uri=uri, images=[common_pb2.Image(data=b) for b in batch]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image 1 cannot be decoded" in err.value.details()
    for request, message in [
        (pb.PredictRequest(model_uri=uri), "no images"),
        (pb.PredictRequest(model_uri=uri, images=[common_pb2.Image(data=good)], top_k=-1), "top_k"),
        (pb.PredictRequest(model_uri=uri, images=[common_pb2.Image(data=b"")]), "image 0 is empty"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert _serving(classification_channel)


@pytest.mark.slow
@pytest.mark.realdata
def test_cli_train_evaluate_predict_review(
    classification_server, syn_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from zsc.cli.main import main

    address = ["--address", f"127.0.0.1:{classification_server.port}"]
    name = f"zsc-test-cli-{uuid.uuid4().hex[:8]}"
    assert main(["train-classifier", "--data", str(syn_folder), "--arch", "test_byobnet", "--epochs", "1",
                 "--batch-size", "32", "--lr", "1e-3", "--seed", "1", "--name", name, *address]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"registered models:/{name}/1 (test_byobnet, 10 classes, 32px)" in out and "dataset: sha256:" in out

    assert main(["evaluate", "--model", f"models:/{name}/1", "--data", str(CIFAR10_TEST), "--limit", "20",
                 *address]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "top-1 accuracy:" in out and "over 20 images" in out and "| airplane |" in out

    image = CIFAR10_TEST / "cat" / "0000.jpg"
    assert main(["predict", "--model", f"models:/{name}/1", str(image), "--top-k", "2", *address]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{image}: ") and len(line.split(", ")) == 2

    assert main(["predict", "--model", "models:/no-such/1", str(image), *address]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("zsc: NOT_FOUND:")

    html = tmp_path / "review.html"
    assert main(["registry", "review", name, "--html", str(html)]) == 0
    assert "| v1 |" in capsys.readouterr().out.splitlines()[0] and html.is_file()


@pytest.mark.usefixtures("empty_weight_caches")
def test_lite0_trains_from_imagenet_weights_offline(classification_channel, syn_folder: Path) -> None:
    request = pb.TrainClassifierRequest(
        data_uri=str(syn_folder), arch="tf_efficientnet_lite0", pretrained=True, epochs=1, batch_size=16, seed=0
    )
    op = watch(classification_channel, pb_grpc.DownstreamStub(classification_channel).TrainClassifier(request))
    result = unpack(op, pb.TrainClassifierResult)
    run = tracking.client().get_run(op.metadata.mlflow_run_id)
    assert run.data.params["pretrained"] == "True" and run.data.params["arch"] == "tf_efficientnet_lite0"
    assert result.model_version
