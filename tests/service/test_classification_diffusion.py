"""The Diffusion Classifier over real gRPC on the tiny profile: the paper's literal procedure gives the same errors,
resumable and sharded dataset evaluation, and bad schedules rejected."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import torch
from conftest import CIFAR10_TEST, start_server, zsc_cli
from PIL import Image

from zsc import codec
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.common.v1 import common_pb2
from zsc.models.diffusion import create_sd_components
from zsc.runtime.client import connect, unpack, watch
from zsc_classification.core.diffusion_classifier import draw_noise, preprocess_images, unet_passes
from zsc_classification.core.diffusion_reference import reference_classify

pytestmark = [pytest.mark.service, pytest.mark.realdata]
CLASSES = ["airplane", "cat", "dog", "ship"]
STAGES = [pb.DiffusionStage(n_samples=4, to_keep=2), pb.DiffusionStage(n_samples=8, to_keep=1)]
TEMPLATE = "a blurry photo of a {}."


def _images(n: int) -> list[bytes]:
    return [(CIFAR10_TEST / CLASSES[i % 4] / f"{i:04d}.jpg").read_bytes() for i in range(n)]


def _options(**kw) -> pb.DiffusionOptions:
    return pb.DiffusionOptions(**{"stages": STAGES, "loss": "l1", "seed": 3, "batch_size": 16, **kw})


def _refused(channel: grpc.Channel, options: pb.DiffusionOptions) -> grpc.RpcError:
    """The error that a DIFFUSION ZeroShot of one image with ``options`` ends in (the call must fail)."""
    request = pb.ZeroShotRequest(
        method=pb.DIFFUSION, class_names=CLASSES, images=[common_pb2.Image(data=_images(1)[0])], diffusion=options
    )
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClassificationStub(channel).ZeroShot(request)
    return err.value


def test_service_errors_equal_the_papers_literal_procedure(classification_channel) -> None:
    images = _images(2)
    reply = pb_grpc.ClassificationStub(classification_channel).ZeroShot(
        pb.ZeroShotRequest(
            method=pb.DIFFUSION,
            class_names=CLASSES,
            prompts=pb.PromptSpec(templates=[TEMPLATE]),
            images=[common_pb2.Image(data=b) for b in images],
            diffusion=_options(),
            top_k=4,
        ),
        timeout=600,
    )
    parts = create_sd_components("tiny:zsc-tiny-sd")  # the profile's model: same config, same seed
    import io

    pixels = preprocess_images([Image.open(io.BytesIO(b)).convert("RGB") for b in images], parts.native_resolution)
    latent = (parts.unet.config.in_channels, parts.unet.config.sample_size, parts.unet.config.sample_size)
    stages = [(s.n_samples, s.to_keep) for s in STAGES]
    for i, result in enumerate(reply.diffusion):
        ref = reference_classify(
            parts, pixels[i], [TEMPLATE.format(c) for c in CLASSES], stages, "l1", draw_noise(3, i, 8, latent)
        )
        expected = ref.class_errors(list(range(len(CLASSES))))
        if result.label != ref.best_prompt:  # only a float-level tie between the two may pick either
            assert abs(expected[-1][result.label] - expected[-1][ref.best_prompt]) < 1e-6, (result, ref)
        assert result.class_name == CLASSES[result.label]
        assert result.unet_passes == ref.unet_passes == unet_passes(stages, len(CLASSES))
        for stage, exp in zip(result.stages, expected, strict=True):
            got = dict(zip(stage.class_indices, stage.errors, strict=True))
            assert set(got) == set(exp)  # the same survivors (their order breaks ties by float noise)
            torch.testing.assert_close(
                torch.tensor([got[c] for c in exp]), torch.tensor(list(exp.values())), rtol=1e-4, atol=1e-6
            )
        assert reply.top_k[i].indices[0] == result.label and not reply.top_k[i].probs
        # classes eliminated at stage 1 never reappear later
        assert set(result.stages[1].class_indices) <= set(result.stages[0].class_indices)


BAD_SCHEDULES = {
    "to_keep not decreasing": ([(4, 2), (8, 2)], "strictly decreasing"),
    "n_samples not increasing": ([(8, 2), (8, 1)], "strictly increasing"),
    "to_keep over classes": ([(4, 9), (8, 1)], "to_keep"),
    "last to_keep not 1": ([(4, 3), (8, 2)], "1"),
    "n_samples over T": ([(4, 2), (2000, 1)], "1000"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCHEDULES))
def test_bad_schedules_are_invalid_argument(case: str, classification_channel) -> None:
    stages, message = BAD_SCHEDULES[case]
    err = _refused(
        classification_channel, _options(stages=[pb.DiffusionStage(n_samples=n, to_keep=k) for n, k in stages])
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()


@pytest.mark.parametrize(
    ("field", "value", "message"), [("loss", "l3", "unknown loss"), ("preset", "mnist", "unknown preset")]
)
def test_unknown_loss_and_preset(field: str, value: str, message: str, classification_channel) -> None:
    err = _refused(classification_channel, _options(**{field: value}))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()


def _dataset(root: Path, n_per_class: int = 2) -> Path:
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            (root / c / f"{i}.jpg").write_bytes((CIFAR10_TEST / c / f"{i:04d}.jpg").read_bytes())
    return root


def _evaluate(channel, request: pb.EvaluateZeroShotRequest) -> tuple[pb.EvaluationResult, common_pb2.Operation]:
    op = watch(channel, pb_grpc.ClassificationStub(channel).EvaluateZeroShot(request, timeout=60))
    return unpack(op, pb.EvaluationResult), op


@pytest.mark.slow
def test_evaluation_resumes_and_shards_match(classification_server, data_root: Path) -> None:
    data = _dataset(data_root / "dc-set")
    channel = connect(f"127.0.0.1:{classification_server.port}")
    base = dict(
        method=pb.DIFFUSION,
        data_uri=str(data),
        diffusion=_options(),
        batch_size=3,
        prompts=pb.PromptSpec(templates=[TEMPLATE]),
    )
    full, op = _evaluate(channel, pb.EvaluateZeroShotRequest(**base, results_uri=str(data_root / "dc.jsonl")))
    assert full.n_images == 8 and op.metadata.metrics["unet_passes_per_image"] == unet_passes([(4, 2), (8, 1)], 4)
    log = (data_root / "dc.jsonl").read_text().splitlines()
    assert len(log) == 8

    # An interrupted run: the log holds 5 results and a torn line. The rerun computes only the missing 3.
    (data_root / "resume.jsonl").write_text("\n".join(log[:5]) + "\n" + log[5][:20])
    resumed, _ = _evaluate(channel, pb.EvaluateZeroShotRequest(**base, results_uri=str(data_root / "resume.jsonl")))
    assert codec.decode(resumed.confusion).tolist() == codec.decode(full.confusion).tolist()
    records = [json.loads(line) for line in (data_root / "resume.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records[:5]] == [0, 1, 2, 3, 4]  # the torn line was cut, not extended
    assert sorted(r["index"] for r in records[5:]) == [5, 6, 7]

    # Two shards (as two replicas would run them) add up to the whole evaluation.
    parts = [
        _evaluate(channel, pb.EvaluateZeroShotRequest(**base, shard_start=a, shard_stop=b))[0]
        for a, b in [(0, 3), (3, 8)]
    ]
    merged = sum(codec.decode(p.confusion) for p in parts)
    assert merged.tolist() == codec.decode(full.confusion).tolist()
    channel.close()


@pytest.mark.slow
def test_two_replicas_give_the_same_result_as_one(tmp_path: Path, data_root: Path) -> None:
    """The CLI spreads one evaluation over two --address replicas; the merged report equals one replica's."""
    data = _dataset(data_root / "dc-replicas", n_per_class=1)
    servers = [start_server("classification", [data_root]) for _ in range(2)]
    try:
        outputs = []
        for addresses in (f"127.0.0.1:{servers[0].port}", f"127.0.0.1:{servers[0].port},127.0.0.1:{servers[1].port}"):
            metrics = tmp_path / f"m{len(outputs)}.json"
            args = ["zeroshot", "--method", "diffusion", "--data", str(data), "--stages", "4:2,8:1", "--loss", "l1"]
            out = zsc_cli(*args, "--seed", "3", "--address", addresses, "--metrics-out", str(metrics))
            assert out.returncode == 0, out.stderr
            outputs.append(json.loads(metrics.read_text()))
        for key in ("top1", "n_images", "per_class_accuracy", "unet_passes_per_image"):
            assert outputs[0][key] == outputs[1][key], key
    finally:
        for s in servers:
            s.stop(0)
