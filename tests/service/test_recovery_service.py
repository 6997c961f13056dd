"""Recovery service over real gRPC on the tiny profile: Recover and Align end to end, bad input, cancel, CLI.

Runs are kept small so the file stays well under 90 s on 2 shared cores: 6 base classes with D = 32 (the tiny
CLIP's width), 30 recovery steps instead of the paper's 1000, and FLPT on ~200 features at batch 8 instead of
thousands at batch 4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import grpc
import pytest
import torch
import torch.nn.functional as F
from conftest import cancel_and_wait
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors.torch import save_file

from zsc import codec, tracking
from zsc.common.v1 import common_pb2
from zsc.features import ALIGNMENT_ID_KEY, Alignment, FeatureSet, alignment_id
from zsc.models.clip import create_clip
from zsc.recovery.v1 import recovery_pb2 as pb
from zsc.recovery.v1 import recovery_pb2_grpc as pb_grpc
from zsc.runtime.client import unpack, watch
from zsc_recovery.core.flpt import FlptConfig, align_features
from zsc_recovery.core.recover import RecoveryConfig, angular_kappa, recover, teacher_from_weights

pytestmark = [pytest.mark.service, pytest.mark.server("recovery")]
BASE = ["cat", "dog", "bird", "frog", "truck", "ship"]
NOVEL = ["horse", "deer"]
DIM = 32  # the tiny profile's CLIP embedding dimension
SMALL = dict(epochs=30, nsample=20, num=40)


def problem(rows: int = len(BASE), dim: int = DIM, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(text features, teacher weights): a cosine teacher whose rows are the text prototypes plus noise."""
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(rows, dim, generator=g), dim=1)
    weight = text + 0.3 * torch.randn(rows, dim, generator=g) / math.sqrt(dim)
    return text, weight


def recover_request(
    out: Path | str,
    text: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    names_only: bool = False,
    **fields: object,
) -> pb.RecoverRequest:
    """A small Recover request (SMALL settings unless overridden); names_only leaves the text features out."""
    t, w = problem()
    weight = w if weight is None else weight
    request = pb.RecoverRequest(
        teacher=pb.Teacher(weight=codec.encode(weight)),
        class_names=fields.pop("class_names", BASE),
        output_uri=str(out),
    )
    if not names_only:
        request.text_features.CopyFrom(codec.encode(t if text is None else text))
    for key, value in {**SMALL, **fields}.items():
        setattr(request, key, value)
    return request


def serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def recovered(stub, channel, data_root: Path) -> tuple[pb.RecoverResult, common_pb2.Operation, Path]:
    out = data_root / "recovery" / "virtual.safetensors"  # the folder does not exist yet: the service creates it
    op = watch(channel, stub.Recover(recover_request(out, seed=3)))
    return unpack(op, pb.RecoverResult), op, out


# ---------------------------------------------------------------------------------------------------- Recover
def test_recover_writes_a_loadable_features_file_equal_to_the_core(recovered, isolated_mlflow: Path) -> None:
    result, op, out = recovered
    assert op.metadata.state == common_pb2.OperationMetadata.SUCCEEDED
    assert op.metadata.unit == "steps" and op.metadata.done_units == op.metadata.total_units == 30
    assert result.features_uri == str(out) and list(result.class_names) == BASE

    # The service is the core behind gRPC: same inputs and seed, same numbers.
    text, weight = problem()
    core = recover(teacher_from_weights(weight), text, RecoveryConfig(seed=3, **SMALL))
    mu = codec.decode(result.mu, "torch")
    assert mu.shape == (len(BASE), DIM)
    torch.testing.assert_close(mu, core.mu.float(), rtol=0, atol=1e-6)
    assert result.kappa == core.kappa == pytest.approx(angular_kappa(text))
    assert list(result.stats.kept_fraction) == pytest.approx(core.kept_fraction.tolist())
    assert result.stats.teacher_agreement == pytest.approx(core.teacher_agreement)
    assert result.stats.final_loss == pytest.approx(core.final_loss)
    assert result.stats.best_step == core.best_step and result.stats.steps_run == 30

    data = FeatureSet.load(out)
    assert data.class_names == BASE and len(data) == result.n_features == len(core.labels)
    assert torch.equal(data.labels, core.labels)
    torch.testing.assert_close(data.features, core.features, rtol=0, atol=1e-6)
    kept = torch.tensor(list(result.stats.kept_fraction))
    assert torch.equal(data.labels.bincount(minlength=len(BASE)), (kept * 40).round().long())
    assert 0 < result.stats.teacher_agreement <= 1
    assert float(kept.mean()) == pytest.approx(result.stats.teacher_agreement)
    torch.testing.assert_close(data.text_features, text)
    meta = data.metadata
    assert meta["mlflow_run_id"] == result.stats.mlflow_run_id == op.metadata.mlflow_run_id
    assert json.loads(meta["params"])["epochs"] == 30
    assert json.loads(meta["kept_fraction"]) == pytest.approx(kept.tolist())

    client = tracking.client()
    run = client.get_run(result.stats.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["kappa_policy"] == "angular"
    assert run.data.metrics["kappa"] == pytest.approx(result.kappa)
    assert run.data.metrics["kept_fraction/cat"] == pytest.approx(result.stats.kept_fraction[0])
    curve = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in curve] == list(range(1, 31))
    assert [m.value for m in curve] == pytest.approx(core.loss_curve)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"kept_fraction.json", "mu.safetensors"}
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(isolated_mlflow)


def test_recover_with_class_names_only_encodes_them_with_the_profile_clip(stub, channel, data_root: Path) -> None:
    out = data_root / "names-only.safetensors"
    _, weight = problem()
    result = unpack(
        watch(channel, stub.Recover(recover_request(out, names_only=True, weight=weight, epochs=5))), pb.RecoverResult
    )
    clip = create_clip("tiny:zsc-tiny-clip")  # the tiny profile's model, built in-process with the same seed
    with torch.no_grad():
        expected = clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in BASE]), normalize=True)
    data = FeatureSet.load(out)
    torch.testing.assert_close(data.text_features, expected, rtol=0, atol=1e-5)
    assert result.kappa == pytest.approx(angular_kappa(expected), rel=1e-4)
    assert "clip tiny:zsc-tiny-clip: a photo of a {}." in data.metadata["params"]


def test_profile_without_clip(tmp_path: Path, server_for) -> None:
    """Names-only Recover and Align need CLIP: FAILED_PRECONDITION. Recover with text features works without it."""
    profile = tmp_path / "noclip.json"
    profile.write_text(
        json.dumps(
            dict(
                name="noclip",
                description="no CLIP",
                clip=None,
                text_to_image=None,
                diffusion_classifier=None,
                downstream_arch="resnet18",
                device="cpu",
                dtype="float32",
            )
        )
    )
    channel = server_for.channel("recovery", [tmp_path], profile=str(profile))
    try:
        stub = pb_grpc.RecoveryStub(channel)
        for call in (
            lambda: stub.Recover(recover_request(tmp_path / "a.safetensors", names_only=True)),
            lambda: stub.Align(pb.AlignRequest(features_uri=str(tmp_path / "a.safetensors"), class_names=BASE)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "has no CLIP model" in err.value.details()
        linear = recover_request(tmp_path / "b.safetensors", epochs=3)
        linear.teacher.metric = pb.LINEAR
        linear.teacher.bias.CopyFrom(codec.encode(torch.linspace(-0.1, 0.1, len(BASE))))
        linear.teacher.temperature = 0.5
        result = unpack(watch(channel, stub.Recover(linear)), pb.RecoverResult)
        assert result.n_features > 0 and FeatureSet.load(tmp_path / "b.safetensors").class_names == BASE
        assert serving(channel)
    finally:
        server_for.release(tmp_path)  # the test's own profile and root


def _bad_recover(data_root: Path) -> dict[str, tuple[pb.RecoverRequest, str]]:
    out = data_root / "bad.safetensors"
    text, weight = problem()
    nan, inf = weight.clone(), weight.clone()
    nan[2, 3], inf[0, 0] = math.nan, math.inf
    bias_cosine = recover_request(out)
    bias_cosine.teacher.bias.CopyFrom(codec.encode(torch.zeros(len(BASE))))
    unknown_metric = recover_request(out)
    unknown_metric.teacher.metric = 9
    cold = recover_request(out)
    cold.teacher.temperature = 0.0
    return {
        "NaN teacher": (recover_request(out, weight=nan), "teacher weight contains NaN or Inf"),
        "Inf teacher": (recover_request(out, weight=inf), "teacher weight contains NaN or Inf"),
        "D differs from text": (
            recover_request(out, text=text[:, :16]),
            "the teacher has D=32 but the text features have D=16",
        ),
        "D differs from CLIP": (
            recover_request(out, names_only=True, weight=weight[:, :16]),
            "the teacher has D=16 but the CLIP model tiny:zsc-tiny-clip encodes D=32",
        ),
        "S differs from classes": (
            recover_request(out, class_names=BASE[:5]),
            "the teacher has S=6 classes but 5 class",
        ),
        "text rows differ": (recover_request(out, text=text[:4]), "the text features have 4 rows for 6 base classes"),
        "kappa zero": (recover_request(out, kappa_policy=pb.FIXED), "needs a finite kappa > 0, got 0.0"),
        "kappa negative": (recover_request(out, kappa_policy=pb.FIXED, kappa=-5.0), "needs a finite kappa > 0"),
        "kappa with angular": (recover_request(out, kappa=10.0), "kappa is only used by the fixed policy"),
        "theta zero": (recover_request(out, theta=0.0), "theta must be finite and > 0"),
        "num zero": (recover_request(out, num=0), "num must be a positive integer, got 0"),
        "num negative": (recover_request(out, num=-3), "num must be a positive integer"),
        "num over cap": (recover_request(out, num=100_001), "num=100001 is over the cap of 100000"),
        "nsample zero": (recover_request(out, nsample=0), "nsample must be a positive integer"),
        "unknown metric": (unknown_metric, "unknown teacher metric 9"),
        "unknown policy": (recover_request(out, kappa_policy=7), "unknown kappa policy 7"),
        "bias with cosine": (bias_cosine, "bias is only used by the linear metric"),
        "temperature zero": (cold, "temperature must be finite and > 0"),
        "output outside root": (recover_request(Path("/tmp/zsc-elsewhere/x.safetensors")), "outside the data root"),
        "output escapes root": (recover_request(data_root / ".." / "x.safetensors"), "outside the data root"),
        "output scheme": (recover_request(Path("s3:/bucket/x")), "unsupported URI scheme"),
        "output is a directory": (recover_request(data_root), "is a directory"),
        "no output": (recover_request(""), "output_uri is empty"),
        "no classes": (recover_request(out, class_names=[]), "class_names is empty"),
        "duplicate class": (recover_request(out, class_names=[*BASE[:5], "cat"]), "appears twice"),
        "bad template": (recover_request(out, names_only=True, prompt_template="no slot"), "exactly one '{}'"),
        "negative seed": (recover_request(out, seed=-1), "seed must be >= 0"),
        "no teacher": (pb.RecoverRequest(class_names=BASE, output_uri=str(out)), "teacher weight is missing"),
        "epochs over limit": (recover_request(out, epochs=2_000_000_000), "over the limit"),
        "unknown preset": (recover_request(out, preset="awa"), "unknown recovery preset 'awa'; choose one of awa2"),
        "unknown sampler": (recover_request(out, sampler=5), "unknown vMF sampler 5; expected EXACT or AUTHORS"),
        "bad value over a preset": (recover_request(out, preset="cub", theta=-1.0), "theta must be finite and > 0"),
    }


def test_bad_recover_requests_get_invalid_argument(stub, channel, data_root: Path) -> None:
    for case, (request, message) in _bad_recover(data_root).items():
        with pytest.raises(grpc.RpcError) as err:
            stub.Recover(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value.details())
        assert message in err.value.details(), (case, err.value.details())
        assert "\n" not in err.value.details(), case
    assert serving(channel)
    assert not (data_root / "bad.safetensors").exists()


def test_recover_preset_and_authors_sampler_equal_the_core(stub, channel, data_root: Path) -> None:
    # oxfordpets: theta 5 and lr 3e-3 from its released config; SMALL's epochs, nsample and num override the rest.
    out = data_root / "recovery" / "pets-authors.safetensors"
    op = watch(channel, stub.Recover(recover_request(out, seed=1, preset="oxfordpets", sampler=pb.AUTHORS)))
    result = unpack(op, pb.RecoverResult)
    text, weight = problem()
    config = RecoveryConfig.from_preset("oxfordpets", seed=1, sampler="authors", **SMALL)
    core = recover(teacher_from_weights(weight), text, config)
    assert result.kappa == core.kappa == pytest.approx(5.0 * angular_kappa(text))
    torch.testing.assert_close(codec.decode(result.mu, "torch"), core.mu.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(FeatureSet.load(out).features, core.features, rtol=0, atol=1e-6)
    params = json.loads(FeatureSet.load(out).metadata["params"])
    got = (params["preset"], params["sampler"], params["theta"], params["epochs"])
    assert got == ("oxfordpets", "authors", 5.0, 30)
    # unset sampler is the exact one: a different draw from the same seed
    exact = recover(teacher_from_weights(weight), text, RecoveryConfig.from_preset("oxfordpets", seed=1, **SMALL))
    assert not torch.equal(exact.features, core.features)


def test_requests_too_big_for_the_service(stub, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsc_recovery import requests

    monkeypatch.setattr(requests, "MAX_BUFFER_BYTES", 1 << 20)  # 1 MiB, so a small request trips the limit
    with pytest.raises(grpc.RpcError) as err:
        stub.Recover(recover_request(data_root / "big.safetensors", num=2000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "6 classes x 2000 samples per class x D=32 features needs" in err.value.details()


def test_cancel_recover(stub, channel, data_root: Path) -> None:
    out = data_root / "cancelled.safetensors"
    op = stub.Recover(recover_request(out, epochs=1_000_000))
    final = cancel_and_wait(channel, op)
    assert final.metadata.done_units < 1_000_000 and not out.exists()
    if final.metadata.mlflow_run_id:  # cancelled before the run started: there is no run to look at
        assert tracking.client().get_run(final.metadata.mlflow_run_id).info.status == "KILLED"
    assert serving(channel)


# ---------------------------------------------------------------------------------------------------- Align
def test_align_end_to_end_matches_the_core(recovered, stub, channel, data_root: Path) -> None:
    _, _, virtual = recovered
    out = data_root / "aligned" / "aligned.safetensors"
    names = ["horse", *BASE[:3], "deer", *BASE[3:]]  # any order: novel classes are the ones not in the file
    settings = pb.FlptSettings(epochs=1, batch_size=8, seed=1)
    op = watch(
        channel,
        stub.Align(
            pb.AlignRequest(features_uri=str(virtual), class_names=names, output_uri=str(out), settings=settings)
        ),
    )
    result = unpack(op, pb.AlignResult)
    source = FeatureSet.load(virtual)
    steps = math.ceil(len(source) / 8)
    assert (result.n_base, result.n_novel, result.n_features, result.steps_run) == (6, 2, len(source), steps)
    assert op.metadata.done_units == op.metadata.total_units == steps
    assert list(result.class_names) == names and result.features_uri == str(out)

    aligned = FeatureSet.load(out)
    assert aligned.class_names == names and aligned.text_features.shape == (8, DIM)
    torch.testing.assert_close(aligned.text_features.norm(dim=1), torch.ones(8))
    # Every feature keeps its class (by name) and moves by the same residual.
    assert [names[i] for i in aligned.labels] == [source.class_names[i] for i in source.labels]
    shift = aligned.features - source.features
    torch.testing.assert_close(shift, shift[:1].expand_as(shift), rtol=0, atol=1e-6)

    clip = create_clip("tiny:zsc-tiny-clip")
    core = align_features(
        clip.model,
        clip.tokenizer,
        source.features,
        source.labels,
        BASE,
        NOVEL,
        FlptConfig(epochs=1, batch_size=8, seed=1),
    )
    assert result.final_loss == pytest.approx(core.final_loss, rel=1e-4)
    torch.testing.assert_close(aligned.features, core.features, rtol=0, atol=1e-5)
    order = [names.index(n) for n in core.class_names]
    torch.testing.assert_close(aligned.text_features[order], core.text_features, rtol=0, atol=1e-5)

    run = tracking.client().get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and aligned.metadata["mlflow_run_id"] == result.mlflow_run_id
    assert len(tracking.client().get_metric_history(result.mlflow_run_id, "loss")) == steps
    assert json.loads(aligned.metadata["novel_classes"]) == ["horse", "deer"]

    # The alignment is an output: the file records it (and is it), the result and the run's lineage name it.
    alignment = Alignment.from_features(aligned)
    residual = codec.decode(result.residual, "torch")
    assert result.alignment_id == alignment.id == run.data.tags[ALIGNMENT_ID_KEY] == alignment_id(aligned.metadata)
    assert result.residual_weight == alignment.weight == 0.005 and float(residual.norm()) > 0
    torch.testing.assert_close(alignment.residual, core.residual, rtol=0, atol=1e-6)
    assert torch.equal(alignment.residual, residual) and alignment.class_names == tuple(names)
    # Moving the virtual features by it gives the file's aligned features exactly.
    assert torch.equal(alignment.apply(source, text=False).features, aligned.features)


def test_align_inline_features(stub, channel, data_root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(12, DIM, generator=g), dim=1)
    y = torch.arange(3).repeat(4)
    inline = pb.InlineFeatures(features=codec.encode(x), labels=codec.encode(y), class_names=BASE[:3])
    out = data_root / "inline-aligned.safetensors"
    request = pb.AlignRequest(features=inline, class_names=[*BASE[:3], *NOVEL], output_uri=str(out))
    result = unpack(watch(channel, stub.Align(request)), pb.AlignResult)
    assert (result.n_base, result.n_novel, result.steps_run) == (3, 2, 3)  # paper defaults: batch 4, 1 epoch
    aligned = FeatureSet.load(out)
    assert aligned.class_names == [*BASE[:3], *NOVEL] and torch.equal(aligned.labels, y)


def test_bad_align_requests(stub, channel, recovered, data_root: Path, tmp_path: Path) -> None:
    _, _, virtual = recovered
    out = str(data_root / "bad-aligned.safetensors")
    corrupt = data_root / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    x = torch.zeros(4, 16)
    y = torch.tensor([0, 1, 0, 5])

    def inline(features: torch.Tensor, labels: torch.Tensor) -> pb.InlineFeatures:
        return pb.InlineFeatures(features=codec.encode(features), labels=codec.encode(labels), class_names=BASE[:2])

    invalid = {
        "no source": (pb.AlignRequest(class_names=BASE, output_uri=out), "give the virtual features"),
        "outside root": (
            pb.AlignRequest(features_uri="/etc/hosts", class_names=BASE, output_uri=out),
            "outside the data root",
        ),
        "base class missing": (
            pb.AlignRequest(features_uri=str(virtual), class_names=BASE[1:], output_uri=out),
            "1 base class(es) of the features are missing from class_names, e.g. 'cat'",
        ),
        "corrupt file": (pb.AlignRequest(features_uri=str(corrupt), class_names=BASE, output_uri=out), "cannot read"),
        "D mismatch": (
            pb.AlignRequest(features=inline(x, y.clamp(max=1)), class_names=BASE, output_uri=out),
            "the features have D=16 but the CLIP model tiny:zsc-tiny-clip encodes D=32",
        ),
        "labels out of range": (
            pb.AlignRequest(features=inline(torch.zeros(4, DIM), y), class_names=BASE, output_uri=out),
            "labels must index the 2 classes",
        ),
        "NaN features": (
            pb.AlignRequest(
                features=inline(torch.full((4, DIM), math.nan), y.clamp(max=1)), class_names=BASE, output_uri=out
            ),
            "features contains NaN or Inf",
        ),
        "batch size zero": (
            pb.AlignRequest(
                features_uri=str(virtual), class_names=BASE, output_uri=out, settings=pb.FlptSettings(batch_size=0)
            ),
            "batch_size must be a positive integer",
        ),
        "output outside root": (
            pb.AlignRequest(features_uri=str(virtual), class_names=BASE, output_uri=str(tmp_path / "x.safetensors")),
            "outside the data root",
        ),
    }
    for case, (request, message) in invalid.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.Align(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value.details())
        assert message in err.value.details(), (case, err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.Align(
            pb.AlignRequest(features_uri=str(data_root / "missing.safetensors"), class_names=BASE, output_uri=out)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert serving(channel) and not Path(out).exists()


def test_cancel_align(recovered, stub, channel, data_root: Path) -> None:
    _, _, virtual = recovered
    out = data_root / "cancelled-aligned.safetensors"
    request = pb.AlignRequest(
        features_uri=str(virtual), class_names=BASE, output_uri=str(out), settings=pb.FlptSettings(epochs=100_000)
    )
    cancel_and_wait(channel, stub.Align(request))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_recover_then_align(server, data_root: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from zsc.cli.main import main

    work = data_root / "recovery-cli"
    work.mkdir()
    text, weight = problem(seed=5)
    save_file({"weight": weight}, work / "teacher.safetensors")
    save_file({"text_features": text}, work / "text.safetensors")
    (work / "classes.txt").write_text("\n".join(BASE) + "\n")
    address = f"127.0.0.1:{server.port}"
    code = main(
        [
            "recover",
            "--teacher",
            str(work / "teacher.safetensors"),
            "--classes",
            f"@{work / 'classes.txt'}",
            "--text-features",
            str(work / "text.safetensors"),
            "--out",
            str(work / "virtual.safetensors"),
            "--epochs",
            "10",
            "--num",
            "20",
            "--seed",
            "2",
            "--address",
            address,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "trusted fraction per class:" in printed and "| cat |" in printed and "| ship |" in printed
    virtual = FeatureSet.load(work / "virtual.safetensors")
    assert virtual.class_names == BASE and json.loads(virtual.metadata["params"])["num"] == 20

    # No --address and no ZSC_RECOVERY_ADDRESS: the command starts its own service for its duration.
    monkeypatch.delenv("ZSC_RECOVERY_ADDRESS", raising=False)
    monkeypatch.chdir(work)
    code = main(
        [
            "align",
            "--features",
            "virtual.safetensors",
            "--classes",
            ",".join(BASE + NOVEL),
            "--out",
            "aligned.safetensors",
            "--batch-size",
            "16",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "text features for 6 base + 2 novel classes" in printed
    assert FeatureSet.load(work / "aligned.safetensors").class_names == BASE + NOVEL

    code = main(
        [
            "recover",
            "--teacher",
            str(work / "teacher.safetensors"),
            "--classes",
            "cat,dog",
            "--out",
            str(work / "x.safetensors"),
            "--address",
            address,
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("zsc: recovery served by ")  # who answered, then the one-line error
    assert code == 1 and len(err) == 2
    assert err[1].startswith("zsc: INVALID_ARGUMENT: the teacher has S=6 classes but 2 class names")


def test_cli_recover_preset_and_sampler(server, data_root: Path, capsys) -> None:
    from zsc.cli.main import main

    work = data_root / "recovery-cli-preset"
    work.mkdir()
    text, weight = problem(seed=6)
    save_file({"weight": weight}, work / "teacher.safetensors")
    save_file({"text_features": text}, work / "text.safetensors")
    args = ["recover", "--teacher", str(work / "teacher.safetensors"), "--classes", ",".join(BASE)]
    args += ["--text-features", str(work / "text.safetensors"), "--address", f"127.0.0.1:{server.port}"]
    args += ["--preset", "sun", "--sampler", "authors"]
    code = main([*args, "--out", str(work / "v.safetensors"), "--epochs", "5"])
    assert code == 0, capsys.readouterr()
    params = json.loads(FeatureSet.load(work / "v.safetensors").metadata["params"])
    # SUN's released config: lr 1e-3, num 50 (its 1500 epochs overridden by --epochs)
    got = (params["preset"], params["sampler"], params["lr"], params["num"], params["epochs"])
    assert got == ("sun", "authors", 1e-3, 50, 5)
    capsys.readouterr()
    code = main([*args, "--out", str(work / "x.safetensors"), "--preset", "nope"])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines()[-1].startswith("zsc: INVALID_ARGUMENT: unknown recovery preset 'nope'")
