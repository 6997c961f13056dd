"""ExtractFeatures over real gRPC (tiny and lite), its feature cache, and the `lite` profile's refusals.

The images are 12 seeded random PNGs in 3 class folders, so the file needs no dataset. Under `lite` the image size
is 64 px to keep CPU time small (~25 s for the file on 2 shared cores, most of it loading EfficientNet and MiniLM).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zsc import codec
from zsc.classification.v1 import classification_pb2 as cls_pb
from zsc.classification.v1 import classification_pb2_grpc as cls_grpc
from zsc.classification.v1 import features_pb2 as pb
from zsc.classification.v1 import features_pb2_grpc as pb_grpc
from zsc.common.v1 import common_pb2
from zsc.data import ImageFolder
from zsc.features import FeatureSet
from zsc.models.clip import create_clip
from zsc.recovery.v1 import recovery_pb2 as rec_pb
from zsc.recovery.v1 import recovery_pb2_grpc as rec_grpc
from zsc.runtime.client import unpack, watch
from zsc_classification.core.extract import (
    Extractors,
    FeatureCache,
    clip_extractors,
    extract_features,
    weights_fingerprint,
)
from zsc_recovery.core.recover import angular_kappa

pytestmark = pytest.mark.service
CLASSES = ["bird", "cat", "ship"]


@pytest.fixture(scope="module")
def image_root(data_root: Path) -> Path:
    """3 classes x 4 seeded random PNGs; the last cat is a byte-identical copy of the first (a duplicate)."""
    root = data_root / "features-images"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "cat" / "3.png").write_bytes((root / "cat" / "0.png").read_bytes())
    return root


@pytest.fixture(scope="module")
def stub(classification_channel) -> pb_grpc.FeaturesStub:
    return pb_grpc.FeaturesStub(classification_channel)


def extract(channel: grpc.Channel, stub: pb_grpc.FeaturesStub, **fields: object) -> pb.ExtractFeaturesResult:
    return unpack(watch(channel, stub.ExtractFeatures(pb.ExtractFeaturesRequest(**fields))), pb.ExtractFeaturesResult)


# ------------------------------------------------------------------------------------------------- tiny (CLIP)
def test_extract_features_under_tiny_writes_clip_features(classification_channel, stub, image_root, data_root) -> None:
    out, cache = data_root / "feats" / "tiny.safetensors", data_root / "feature-cache"
    first = extract(classification_channel, stub, data_uri=str(image_root), output_uri=str(out), cache_uri=str(cache))
    assert first.features_uri == str(out) and first.n_images == 12 and list(first.class_names) == CLASSES
    assert first.dim == first.text_dim == 32 and first.aligned
    assert first.cache_hits == 0 and first.computed == 12

    data = FeatureSet.load(out)
    assert data.class_names == CLASSES and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.features.shape == (12, 32) and data.text_features.shape == (3, 32)
    assert json.loads(data.metadata["aligned"]) is True and data.metadata["dataset_sha256"] == first.dataset_sha256
    torch.testing.assert_close(data.features[4], data.features[7])  # the duplicate image

    # The service is CLIP's towers behind gRPC: same images, same prompts, same numbers.
    clip = create_clip("tiny:zsc-tiny-clip", seed=0)
    paths = [p for p, _ in ImageFolder.open(image_root).samples]
    with torch.inference_mode():
        images = torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths])
        expected = F.normalize(clip.model.encode_image(images), dim=-1)
        text = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    torch.testing.assert_close(data.features, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(data.text_features, text, rtol=0, atol=1e-5)

    # A rerun reads every feature from the cache (11 distinct images were stored) and writes the same file content.
    again = extract(
        classification_channel,
        stub,
        data_uri=str(image_root),
        output_uri=str(data_root / "feats" / "tiny2.safetensors"),
        cache_uri=str(cache),
        prompt_template="a blurry photo of a {}.",
    )
    assert again.cache_hits == 12 and again.computed == 0 and again.dataset_sha256 == first.dataset_sha256
    rerun = FeatureSet.load(again.features_uri)
    assert torch.equal(rerun.features, data.features)
    assert not torch.allclose(rerun.text_features, data.text_features)  # new prompt, new text features
    assert len(list(cache.rglob("shard-*.safetensors"))) == 1


BAD = {
    "data outside the root": (dict(data_uri="/etc"), grpc.StatusCode.INVALID_ARGUMENT, "outside the data root"),
    "data escapes the root": (dict(data_uri="{root}/../../.."), grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    "data scheme": (dict(data_uri="s3://bucket/x"), grpc.StatusCode.INVALID_ARGUMENT, "unsupported URI scheme"),
    "data missing": (dict(data_uri="{data}/nope"), grpc.StatusCode.NOT_FOUND, "does not exist"),
    "output outside": (
        dict(output_uri="/tmp/zsc-elsewhere/f.safetensors"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside",
    ),
    "output is a dir": (dict(output_uri="{data}"), grpc.StatusCode.INVALID_ARGUMENT, "is a directory"),
    "no output": (dict(output_uri=""), grpc.StatusCode.INVALID_ARGUMENT, "output_uri is empty"),
    "cache outside": (dict(cache_uri="/tmp/zsc-elsewhere"), grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    "negative limit": (dict(limit=-1), grpc.StatusCode.INVALID_ARGUMENT, "must be >= 0"),
    "huge batch": (dict(batch_size=5000), grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 1024"),
    "class names not folders": (
        dict(class_names=["bird", "cat", "dog"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing class ['dog'] (no folder of that name), extra folder ['ship'] (no such class)",
    ),
    "bad template": (dict(prompt_template="no slot"), grpc.StatusCode.INVALID_ARGUMENT, "exactly one '{}'"),
    "image size on CLIP": (dict(image_size=64), grpc.StatusCode.INVALID_ARGUMENT, "CLIP's input size is fixed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_extract_requests_are_refused_before_any_job(stub, image_root, data_root, case: str) -> None:
    changes, code, message = BAD[case]
    fields: dict[str, object] = {"data_uri": str(image_root), "output_uri": str(data_root / "bad.safetensors")}
    fields.update(
        {k: v.format(root=image_root, data=data_root) if isinstance(v, str) else v for k, v in changes.items()}
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.ExtractFeatures(pb.ExtractFeaturesRequest(**fields))
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details() and "\n" not in err.value.details()
    assert not (data_root / "bad.safetensors").exists()


def test_cli_extract_features_writes_the_file_and_errors_in_one_line(image_root, data_root, capsys) -> None:
    from zsc.cli.main import main

    out = data_root / "feats" / "cli.safetensors"
    args = ["--data", str(image_root), "--out", str(out), "--limit", "6", "--cache-dir", str(data_root / "cli-cache")]
    # prompt names that are not the folder names need the explicit map; the order of --classes is the label order
    names = ["--classes", "a ship,a bird,a cat", "--class-map", "bird=a bird,cat=a cat,ship=a ship"]
    code = main(["extract-features", "--profile", "tiny", *args, *names])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "extracted 6 image features (D=32, tiny:zsc-tiny-clip)" in printed.out and "one aligned space" in printed.out
    written = FeatureSet.load(out)
    assert written.class_names == ["a ship", "a bird", "a cat"]
    assert written.labels.tolist() == [0, 0, 1, 1, 2, 2]  # the ship images carry the label of "a ship"
    assert main(["extract-features", "--profile", "tiny", *args, "--classes", "a bird,a cat,a ship"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the line naming the server that answered
    assert err.startswith("zsc: INVALID_ARGUMENT: class_names do not match the class folders")
    assert "missing class ['a bird', 'a cat', 'a ship']" in err and "extra folder ['bird', 'cat', 'ship']" in err
    code = main(["extract-features", "--profile", "tiny", "--data", "/etc", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("zsc: INVALID_ARGUMENT") and "\n" not in err


# ----------------------------------------------------------------------------------------------- core: the cache
def _counting_clip() -> tuple[Extractors, list[int]]:
    clip = create_clip("tiny:zsc-tiny-clip", seed=0)
    extractors = clip_extractors(clip, weights_fingerprint(clip.model))
    calls: list[int] = []
    encode = extractors.encode_images

    def counted(images: list[Image.Image]) -> torch.Tensor:
        calls.append(len(images))
        return encode(images)

    extractors.encode_images = counted
    return extractors, calls


def test_cache_is_keyed_by_image_bytes_and_model_and_survives_bad_shards(image_root: Path, tmp_path: Path) -> None:
    extractors, calls = _counting_clip()
    dataset = ImageFolder.open(image_root)
    cache = FeatureCache(tmp_path, extractors.image_model_id, extractors.dim)
    progress: list[tuple[int, int]] = []
    first = extract_features(dataset, extractors, cache=cache, batch_size=5, on_progress=lambda *p: progress.append(p))
    assert calls == [5, 5, 1]  # 11 distinct images in batches of 5; the duplicate is encoded once
    assert progress[0] == (0, 12) and progress[-1] == (12, 12) and first.computed == 12

    # A renamed copy of the dataset hits the cache; a changed image misses; a foreign shard is ignored.
    moved = tmp_path / "moved"
    for path, _ in dataset.samples:
        (moved / path.parent.name).mkdir(parents=True, exist_ok=True)
        (moved / path.parent.name / f"renamed-{path.name}").write_bytes(path.read_bytes())
    Image.new("RGB", (32, 32), (255, 0, 0)).save(moved / "ship" / "renamed-0.png")
    (cache.dir / "shard-broken.safetensors").write_bytes(b"not a safetensors file")
    calls.clear()
    second = extract_features(ImageFolder.open(moved), extractors, cache=FeatureCache(tmp_path, cache.model_id, 32))
    assert calls == [1] and second.cache_hits == 11 and second.computed == 1
    torch.testing.assert_close(second.features.features[:8], first.features.features[:8], rtol=0, atol=0)

    # Another model id is another cache: nothing is shared.
    other = FeatureCache(tmp_path, cache.model_id + "|other transform", 32)
    assert other.dir != cache.dir and other.get([k for k in cache._index]) == {}
    calls.clear()
    extract_features(dataset, extractors, cache=other)
    assert sum(calls) == 11


# --------------------------------------------------------------------------------------- lite: real, unaligned
@pytest.fixture(scope="module")
def lite_classification(image_root: Path, server_for) -> grpc.Channel:
    return server_for.channel("classification", profile="lite")


def test_extract_features_under_lite_gives_efficientnet_and_minilm_features(
    lite_classification, image_root: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSC_FEATURE_CACHE_DIR", str(tmp_path / "default-cache"))
    stub = pb_grpc.FeaturesStub(lite_classification)
    out = data_root / "feats" / "lite.safetensors"
    result = extract(
        lite_classification,
        stub,
        data_uri=str(image_root),
        output_uri=str(out),
        image_size=64,
        disable_cache=True,
        limit=6,
    )
    assert result.dim == 1280 and result.text_dim == 384 and not result.aligned
    assert result.image_encoder == "efficientnet-lite0:pypi" and result.text_encoder == "minilm:pypi"
    data = FeatureSet.load(out)
    assert data.features.shape == (6, 1280) and bool((data.features >= 0).all())  # pooled ReLU6 pre-logits
    torch.testing.assert_close(data.text_features.norm(dim=1), torch.ones(3))
    assert json.loads(data.metadata["aligned"]) is False and "64" in data.metadata["image_model_id"]
    assert not (tmp_path / "default-cache").exists()  # disable_cache: the server's cache is left alone
    with pytest.raises(grpc.RpcError) as err:  # EfficientNet downsamples 32x: a smaller input is refused
        stub.ExtractFeatures(pb.ExtractFeaturesRequest(data_uri=str(image_root), output_uri=str(out), image_size=8))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image_size must be 0 or lie in" in err.value.details()
    )


def test_clip_zero_shot_under_lite_is_a_failed_precondition(lite_classification, image_root) -> None:
    stub = cls_grpc.ClassificationStub(lite_classification)
    image = common_pb2.Image(data=(image_root / "cat" / "0.png").read_bytes(), mime="image/png")
    with pytest.raises(grpc.RpcError) as err:
        stub.ZeroShot(cls_pb.ZeroShotRequest(method=cls_pb.CLIP, class_names=CLASSES, images=[image]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "profile 'lite' has no CLIP model, so CLIP zero-shot is unavailable"
    with pytest.raises(grpc.RpcError) as err:
        stub.EvaluateZeroShot(cls_pb.EvaluateZeroShotRequest(data_uri=str(image_root)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def lite_recovery(server_for) -> grpc.Channel:
    return server_for.channel("recovery", profile="lite")


def test_align_under_lite_is_a_failed_precondition(lite_recovery, data_root: Path) -> None:
    stub = rec_grpc.RecoveryStub(lite_recovery)
    with pytest.raises(grpc.RpcError) as err:
        stub.Align(rec_pb.AlignRequest(features_uri=str(data_root / "x.safetensors"), class_names=CLASSES))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == ("profile 'lite' has no CLIP model; FLPT tunes the profile's CLIP text encoder")


def _teacher_problem(dim: int = 48, text_dim: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, dim, generator=g), F.normalize(torch.randn(4, text_dim, generator=g), dim=1)


def test_recover_in_a_non_aligned_space_starts_from_the_teacher(lite_recovery, data_root: Path) -> None:
    """Teacher in a 48-d image space, 12-d text features: mu starts at the normalized teacher rows."""
    stub = rec_grpc.RecoveryStub(lite_recovery)
    weight, text = _teacher_problem()
    names = ["a", "b", "c", "d"]
    out = data_root / "recovery-lite" / "virtual.safetensors"

    def request(**fields: object) -> rec_pb.RecoverRequest:
        req = rec_pb.RecoverRequest(
            teacher=rec_pb.Teacher(weight=codec.encode(weight)),
            class_names=names,
            text_features=codec.encode(text),
            output_uri=str(out),
            num=20,
            nsample=10,
            **fields,
        )
        return req

    with pytest.raises(grpc.RpcError) as err:  # a D mismatch is refused unless the caller asks for this mode
        stub.Recover(request(epochs=0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "the teacher has D=48 but the text features have D=12; set init_from_teacher to recover in the teacher's space"
    )
    start = unpack(watch(lite_recovery, stub.Recover(request(epochs=0, init_from_teacher=True))), rec_pb.RecoverResult)
    prototypes = F.normalize(weight, dim=1)
    torch.testing.assert_close(codec.decode(start.mu, "torch"), prototypes, rtol=0, atol=1e-6)
    assert start.kappa == pytest.approx(angular_kappa(prototypes))  # the kappa policy reads the init prototypes
    trained = unpack(
        watch(lite_recovery, stub.Recover(request(epochs=20, init_from_teacher=True))), rec_pb.RecoverResult
    )
    data = FeatureSet.load(out)
    assert data.dim == 48 and data.text_dim == 12 and len(data) == trained.n_features > 0
    torch.testing.assert_close(data.text_features, text)
    assert json.loads(data.metadata["params"])["init"] == "teacher"
    assert math.isfinite(trained.stats.final_loss) and trained.stats.steps_run == 20
