"""CLIP zero-shot over real gRPC on the tiny profile: equivalence with open_clip in-process, bad input, CLI."""

from __future__ import annotations

import io
import os
from pathlib import Path

import grpc
import numpy as np
import open_clip
import pytest
import torch
from conftest import CIFAR10_TEST, REPO, zsc_cli
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from zsc import codec
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.common.v1 import common_pb2
from zsc.runtime.client import unpack, watch

pytestmark = pytest.mark.service
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _jpeg_bytes(n: int) -> list[bytes]:
    files = sorted((CIFAR10_TEST / "cat").glob("*.jpg"))[:n] if CIFAR10_TEST.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _request(images: list[bytes], classes: list[str] = CLASSES, **kw) -> pb.ZeroShotRequest:
    return pb.ZeroShotRequest(
        method=pb.CLIP, class_names=classes, images=[common_pb2.Image(data=b, mime="image/jpeg") for b in images], **kw
    )


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_clip_logits_equal_open_clip_in_process(classification_channel) -> None:
    images = _jpeg_bytes(4)
    templates = ["a photo of a {}.", "a blurry photo of a {}."]
    reply = pb_grpc.ClassificationStub(classification_channel).ZeroShot(
        _request(images, prompts=pb.PromptSpec(templates=templates), top_k=3)
    )
    logits = codec.decode(reply.logits, "torch")

    # The same model built directly with open_clip: same config, same seed, same preprocessing.
    open_clip.add_model_config(REPO / "shared/zsc/profiles/configs/zsc-tiny-clip.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("zsc-tiny-clip", pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer("zsc-tiny-clip")
    with torch.no_grad():
        text = model.encode_text(tokenizer([t.format(c) for c in CLASSES for t in templates]), normalize=True)
        text = torch.nn.functional.normalize(text.view(len(CLASSES), len(templates), -1).mean(1), dim=-1)
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        expected = model.logit_scale.exp() * model.encode_image(pixels, normalize=True) @ text.T
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    probs = codec.decode(reply.probs, "torch")
    torch.testing.assert_close(probs, expected.softmax(-1), rtol=1e-4, atol=1e-5)
    assert [list(t.indices) for t in reply.top_k] == expected.topk(3).indices.tolist()
    assert reply.top_k[0].labels[0] == CLASSES[reply.top_k[0].indices[0]]


def test_template_sets_and_cache(classification_server, classification_channel) -> None:
    stub = pb_grpc.ClassificationStub(classification_channel)
    a = stub.ZeroShot(_request(_jpeg_bytes(1), prompts=pb.PromptSpec(template_set="cifar")))
    b = stub.ZeroShot(_request(_jpeg_bytes(1), prompts=pb.PromptSpec(template_set="cifar")))
    assert a.logits.data == b.logits.data
    c = stub.ZeroShot(_request(_jpeg_bytes(1), prompts=pb.PromptSpec(template_set="single")))
    assert a.logits.data != c.logits.data
    cached = classification_server.service.clip._cache.keys()
    assert any(len(templates) == 18 for _, templates in cached)  # CLIP's CIFAR ensemble


BAD_REQUESTS = {
    "no class names": (lambda: _request(_jpeg_bytes(1), classes=[]), "class_names is empty"),
    "duplicate class": (lambda: _request(_jpeg_bytes(1), classes=["cat", "dog", "cat"]), "appears twice"),
    "empty class": (lambda: _request(_jpeg_bytes(1), classes=["cat", " "]), "empty"),
    "huge class name": (lambda: _request(_jpeg_bytes(1), classes=["x" * 10_000]), "longer than"),
    "no images": (lambda: _request([]), "no images"),
    "corrupt image": (lambda: _request([b"\x89PNG\r\n\x1a\n garbage"]), "image 0 cannot be decoded"),
    "zero-byte image": (lambda: _request([_jpeg_bytes(1)[0], b""]), "image 1 is empty"),
    "truncated image": (lambda: _request([_jpeg_bytes(1)[0][:200]]), "cannot be decoded"),
    "bad template": (lambda: _request(_jpeg_bytes(1), prompts=pb.PromptSpec(templates=["no slot"])), "exactly one"),
    "unknown set": (lambda: _request(_jpeg_bytes(1), prompts=pb.PromptSpec(template_set="nope")), "unknown template"),
    "negative top_k": (lambda: _request(_jpeg_bytes(1), top_k=-1), "top_k"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_zeroshot_requests_get_invalid_argument(case: str, classification_channel) -> None:
    build, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClassificationStub(classification_channel).ZeroShot(build())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details() and "\n" not in err.value.details()
    assert _serving(classification_channel)


def test_oversized_message_gets_resource_exhausted(classification_channel) -> None:
    huge = [b"\0" * (9 << 20)]  # the test server's limit is 8 MiB
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClassificationStub(classification_channel).ZeroShot(_request(huge))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _serving(classification_channel)


def test_data_path_outside_the_root_is_refused(classification_channel, data_root: Path, tmp_path: Path) -> None:
    stub = pb_grpc.ClassificationStub(classification_channel)
    outside = tmp_path / "elsewhere"
    (outside / "cat").mkdir(parents=True)
    link = data_root / "escape"
    link.symlink_to(outside, target_is_directory=True)
    for uri in ["/etc", f"{data_root}/../../etc", str(link), "s3://bucket/data", f"file://{outside}"]:
        with pytest.raises(grpc.RpcError) as err:
            stub.EvaluateZeroShot(pb.EvaluateZeroShotRequest(data_uri=uri))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, uri
    with pytest.raises(grpc.RpcError) as err:
        stub.EvaluateZeroShot(pb.EvaluateZeroShotRequest(data_uri=str(data_root / "missing")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _serving(classification_channel)


def test_class_names_must_match_the_folders(classification_channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClassificationStub(classification_channel).EvaluateZeroShot(
            pb.EvaluateZeroShotRequest(data_uri=str(CIFAR10_TEST), class_names=["cat", "dog"])
        )
    details = err.value.details()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "extra folder ['airplane', 'automobile'," in details


@pytest.mark.realdata
def test_evaluate_zeroshot_on_cifar10_logs_mlflow_run(classification_channel, isolated_mlflow: Path) -> None:
    stub = pb_grpc.ClassificationStub(classification_channel)
    op = stub.EvaluateZeroShot(pb.EvaluateZeroShotRequest(data_uri=str(CIFAR10_TEST), limit=100, batch_size=32))
    result = unpack(watch(classification_channel, op), pb.EvaluationResult)
    assert result.n_images == 100 and list(result.class_names) == CLASSES
    confusion = codec.decode(result.confusion)
    assert confusion.shape == (10, 10) and confusion.sum() == 100 and (confusion.sum(1) == 10).all()
    assert result.top1 == pytest.approx(np.trace(confusion) / 100)
    assert result.macro_accuracy == pytest.approx(np.mean(result.per_class_accuracy))

    from zsc import tracking

    run = tracking.client().get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["top1"] == pytest.approx(result.top1)
    artifacts = {a.path for a in tracking.client().list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "confusion.json", "per_class_accuracy.png"} <= artifacts
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(isolated_mlflow)


@pytest.mark.realdata
@pytest.mark.slow
def test_cli_zeroshot_over_100_cifar10_images(tmp_path: Path, isolated_mlflow: Path) -> None:
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(tmp_path / "mlflow")}
    env.pop("ZSC_CLASSIFICATION_ADDRESS", None)
    args = ["zeroshot", "--method", "clip", "--profile", "tiny", "--data", str(CIFAR10_TEST), "--limit", "100"]
    out = zsc_cli(*args, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "top-1 accuracy:" in out.stdout and "over 100 images" in out.stdout
    assert "| airplane |" in out.stdout and "confusion matrix" in out.stdout
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert list((tmp_path / "mlflow" / "artifacts").rglob("confusion_matrix.png"))


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(tmp_path / "mlflow")}
    out = zsc_cli("zeroshot", "--data", "/etc", "--profile", "tiny", env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("zsc: classification served by ") and len(lines) == 2  # who answered, then the error
    assert lines[1].startswith("zsc: INVALID_ARGUMENT") or "no class folders" in lines[1]
    assert "Traceback" not in out.stderr
