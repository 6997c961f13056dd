"""SHIP over real gRPC on the tiny profile: TrainGenerator (SHIP_VAE) → GenerateFeatures → FineTune → EvaluateGZSL.

The data is the constructed problem of ``core/ship_problem.py`` (problem seed 0): "real" features are the tiny
CLIP's own text-encoder outputs for prompts with a hidden context, 10 base classes (16 images x 4 views, a feature
bank) and 10 new classes known by name only. Sizes are those of the unit tests (tests/unit/test_ship.py explains
them): the VAE 100 epochs at batch 32, lr 3e-3, widths 256, latent 32; CoOp 50 epochs at batch 32 and lr 5e-4;
CLIP-Adapter 100 epochs at lr 0.02 with reduction 1; Tip-Adapter-F its defaults at batch 32. FineTune follows the
released protocol unless asked otherwise: all 16 shots train and the last epoch is returned.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save_file

from zsc import codec, tracking
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.features import FORMAT, FeatureSet, content_hash
from zsc.generative.v1 import generative_pb2 as pb
from zsc.generative.v1 import generative_pb2_grpc as pb_grpc
from zsc.models.clip import create_clip
from zsc.runtime.client import unpack, watch
from zsc_generative.core.ship_problem import HiddenContextProblem, hidden_context_problem

pytestmark = [pytest.mark.service, pytest.mark.usefixtures("one_torch_thread"), pytest.mark.server("generative")]
SHIP = dict(epochs=25, lr=3e-3, batch_size=8, noise_dim=32)
SHIP_WIDTHS = dict(encoder_hidden=256, generator_hidden=256)
FINETUNE = {
    pb.COOP: dict(epochs=25, batch_size=16, lr=5e-4),
    pb.CLIP_ADAPTER: dict(epochs=50, batch_size=16, lr=0.02, reduction=1),
    pb.TIP_ADAPTER_F: dict(batch_size=32),
}


def run_op(channel: grpc.Channel, op: common_pb2.Operation, result_type: type):
    return unpack(watch(channel, op), result_type)


@dataclasses.dataclass
class Files:
    problem: HiddenContextProblem
    folder: Path
    train: Path
    test: Path

    @property
    def new_names(self) -> list[str]:
        return [self.problem.class_names[i] for i in self.problem.new]


@pytest.fixture(scope="module")
def files(data_root: Path) -> Files:
    clip = create_clip("tiny:zsc-tiny-clip")  # the tiny profile's CLIP (seed 0), the one the server loads
    problem = hidden_context_problem(clip.model, clip.tokenizer, seed=0)
    folder = data_root / "ship"
    folder.mkdir(exist_ok=True)
    problem.train.metadata["mlflow_run_id"] = "0e" * 16  # an upstream run, for lineage
    problem.train.save(folder / "train.safetensors")
    problem.test.save(folder / "test.safetensors")
    return Files(problem, folder, folder / "train.safetensors", folder / "test.safetensors")


def ship_request(files: Files, seed: int = 0, **settings: object) -> pb.TrainGeneratorRequest:
    return pb.TrainGeneratorRequest(
        features_uri=str(files.train),
        kind=pb.SHIP_VAE,
        seed=seed,
        settings=pb.GeneratorSettings(**{**SHIP, **settings}),
        ship_vae=pb.ShipVaeSettings(**SHIP_WIDTHS),
    )


def finetune_request(files: Files, method: int, novel: Path | None, **settings: object) -> pb.FineTuneRequest:
    return pb.FineTuneRequest(
        base_features_uri=str(files.train),
        novel_features_uri=str(novel) if novel else "",
        class_names=files.problem.class_names,
        method=method,
        settings=pb.FineTuneSettings(**{**FINETUNE[method], **settings}),
    )


@pytest.fixture(scope="module")
def pipeline(files: Files, stub, channel) -> dict[str, object]:
    """Train the VAE and synthesize the new classes; ``tune(method)`` fine-tunes with and without them and evaluates
    both (once per method, on first use, so no single test pays for all six runs)."""
    gen = run_op(channel, stub.TrainGenerator(ship_request(files)), pb.TrainGeneratorResult)
    novel = files.folder / "novel.safetensors"
    request = pb.GenerateFeaturesRequest(
        generator=gen.model.model_uri, class_names=files.new_names, per_class=50, seed=0, output_uri=str(novel)
    )
    synth = run_op(channel, stub.GenerateFeatures(request), pb.GenerateFeaturesResult)
    tuned: dict[tuple[int, bool], pb.FineTuneResult] = {}
    metrics: dict[tuple[int, bool], pb.EvaluateGZSLResult] = {}

    def tune(method: int) -> None:
        for with_novel in (False, True):
            if (method, with_novel) in tuned:
                continue
            request = finetune_request(files, method, novel if with_novel else None)
            result = run_op(channel, stub.FineTune(request), pb.FineTuneResult)
            ask = pb.EvaluateGZSLRequest(
                classifier=result.model.model_uri, test_features_uri=str(files.test), unseen_classes=files.new_names
            )
            tuned[method, with_novel] = result
            metrics[method, with_novel] = run_op(channel, stub.EvaluateGZSL(ask), pb.EvaluateGZSLResult)

    return {"generator": gen, "synth": synth, "novel": novel, "tuned": tuned, "metrics": metrics, "tune": tune}


# ------------------------------------------------------------------------------------------------------ end to end
def test_ship_vae_trains_and_synthesizes_from_names(pipeline, files: Files) -> None:
    gen, synth = pipeline["generator"], pipeline["synth"]
    assert gen.kind == pb.SHIP_VAE and (gen.feature_dim, gen.text_dim) == (32, 32)
    assert (gen.epochs_run, gen.best_epoch) == (25, 25) and gen.model.name == "zsc-generator-ship_vae"
    assert list(gen.trained_classes) == files.problem.class_names[:10]
    assert gen.final_metrics["recon_cosine"] > 0.97  # measured 0.983
    assert synth.n_features == 500 and list(synth.class_names) == files.new_names
    novel = FeatureSet.load(pipeline["novel"])
    torch.testing.assert_close(novel.features.norm(dim=1), torch.ones(500))
    assert novel.metadata["generator_kind"] == "ship_vae" and novel.text_features.shape == (10, 32)
    # Its text features are CLIP's zero-shot ones of the names, as in the training file.
    torch.testing.assert_close(novel.text_features, files.problem.test.text_features[10:])
    # The synthesized features land nearest their true class (class means of held-out "real" features).
    test = files.problem.test
    means = torch.nn.functional.normalize(torch.stack([test.features[test.labels == c].mean(0) for c in range(20)]))
    nearest = (novel.features @ means.T).argmax(dim=1)
    assert float((nearest == novel.labels + 10).float().mean()) > 0.85  # measured 0.99


@pytest.mark.parametrize("method", list(FINETUNE), ids=lambda m: pb.FineTuneMethod.Name(m).lower())
def test_synthesized_features_raise_new_accuracy_over_grpc(method: int, pipeline) -> None:
    pipeline["tune"](method)
    metrics, tuned = pipeline["metrics"], pipeline["tuned"]
    without, with_novel = metrics[method, False].base_to_new, metrics[method, True].base_to_new
    # Measured N without -> with (seed 0): CoOp 0.94 -> 1.00, CLIP-Adapter 0.50 -> 0.90, Tip-Adapter-F 0.66 -> 0.70.
    assert with_novel.new > without.new + 0.03, (without, with_novel)
    for result in (metrics[method, False], metrics[method, True]):
        bn, gz = result.base_to_new, result.gzsl
        assert bn.harmonic == pytest.approx(2 * bn.base * bn.new / (bn.base + bn.new))
        assert bn.base >= gz.seen - 1e-9 and bn.new >= gz.unseen - 1e-9  # within-split prediction only helps
        assert list(result.unseen_indices) == list(range(10, 20)) and result.n_samples == 1000
    for with_synthetic in (False, True):
        result = tuned[method, with_synthetic]
        assert result.method == method and list(result.base_indices) == list(range(10))
        assert list(result.new_indices) == list(range(10, 20))
        assert (result.n_fit, result.n_val, result.views) == (160, 0, 4)  # every shot trains
        assert result.n_synthetic == (500 if with_synthetic else 0)
        assert result.best_epoch == result.epochs_run == FINETUNE[method].get("epochs", 20)  # the last epoch
        assert math.isnan(result.val_accuracy)


def test_held_out_selection_and_tip_adapter_presets_are_request_options(pipeline, channel, stub, files) -> None:
    request = finetune_request(files, pb.TIP_ADAPTER_F, pipeline["novel"], epochs=3)
    request.settings.val_fraction = 0.2
    request.settings.tip_adapter_preset = "dtd"
    result = run_op(channel, stub.FineTune(request), pb.FineTuneResult)
    assert (result.n_fit, result.n_val) == (130, 30) and 1 <= result.best_epoch <= result.epochs_run == 3
    assert 0 <= result.val_accuracy <= 1
    alphas = [2.0] + [0.1 + i * (13 - 0.1) / 20 for i in range(20)]  # dtd: init 2, alpha grid [0.1, 13) of 20
    assert min(abs(result.final_metrics["alpha"] - a) for a in alphas) < 1e-6
    # Without held-out data nothing is searched: the preset's initial alpha and beta, and its epochs, are kept.
    request = finetune_request(files, pb.TIP_ADAPTER_F, pipeline["novel"])
    request.settings.tip_adapter_preset = "oxford_flowers"
    request.settings.epochs = 2
    result = run_op(channel, stub.FineTune(request), pb.FineTuneResult)
    assert (result.final_metrics["alpha"], result.final_metrics["beta"]) == (10.0, 1.0) and result.n_val == 0


def test_versions_carry_lineage(pipeline, files: Files) -> None:
    pipeline["tune"](pb.TIP_ADAPTER_F)
    client = tracking.client()
    gen = pipeline["generator"]
    tags = client.get_model_version(gen.model.name, gen.model.version).tags
    expected = {
        "zsc.kind": "generator-ship_vae",
        "zsc.profile": "tiny",
        "zsc.clip": "tiny:zsc-tiny-clip",
        "zsc.dataset.hash": f"sha256:{content_hash(files.train)}",
        "zsc.recovery_run_id": "0e" * 16,
    }
    assert expected.items() <= tags.items()
    history = client.get_metric_history(gen.model.run_id, "loss_rec")
    assert [m.step for m in history] == list(range(1, 26))
    config = json.loads(
        Path(client.download_artifacts(gen.model.run_id, "generator/config.json")).read_text(encoding="utf-8")
    )
    assert config["kind"] == "ship_vae" and config["clip"] == "tiny:zsc-tiny-clip" and config["clip_text_fingerprint"]

    result = pipeline["tuned"][pb.TIP_ADAPTER_F, True]
    tags = client.get_model_version(result.model.name, result.model.version).tags
    assert result.model.name == "zsc-finetune-tip_adapter_f"
    expected = {
        "zsc.kind": "finetune-tip_adapter_f",
        "zsc.synthetic": "true",
        "zsc.generator.model_uri": gen.model.model_uri,
        "zsc.generator.run_id": gen.model.run_id,
        "zsc.novel.hash": f"sha256:{content_hash(pipeline['novel'])}",
        "zsc.dataset.hash": f"sha256:{content_hash(files.train)}",
        "zsc.seed": "0",
    }
    assert expected.items() <= tags.items()
    assert float(tags["real_test.N"]) == pytest.approx(pipeline["metrics"][pb.TIP_ADAPTER_F, True].base_to_new.new)
    run = client.get_run(result.model.run_id)
    assert run.data.params["method"] == "tip_adapter_f" and run.data.params["views"] == "4"
    assert {"best_epoch", "alpha", "beta"} <= set(run.data.metrics) and run.data.params["val_fraction"] == "0.0"
    assert run.data.params["tip_adapter_preset"] == "imagenet" and run.data.metrics["alpha"] == 1.17
    baseline = pipeline["tuned"][pb.TIP_ADAPTER_F, False]
    assert client.get_model_version(baseline.model.name, baseline.model.version).tags["zsc.synthetic"] == "false"


def test_generation_from_new_names_is_seeded(pipeline, stub) -> None:
    gen = pipeline["generator"].model.model_uri

    def stream(names: list[str], seed: int) -> torch.Tensor:
        chunks = list(
            stub.StreamFeatures(pb.GenerateFeaturesRequest(generator=gen, class_names=names, per_class=4, seed=seed))
        )
        return codec.decode_chunks((c.features for c in chunks), "torch")

    unseen_name = ["a class no file has ever named"]
    a, b, c = stream(unseen_name, 1), stream(unseen_name, 1), stream(unseen_name, 2)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_generator_folder_rebuilds_only_with_its_own_clip(pipeline, stub) -> None:
    from zsc.errors import FailedPrecondition
    from zsc_generative import models
    from zsc_generative.core.ship import synthesize

    gen = pipeline["generator"]
    folder = Path(tracking.client().download_artifacts(gen.model.run_id, "generator"))
    same = models.read_generator(folder, gen.model.model_uri, clip=lambda: create_clip("tiny:zsc-tiny-clip"))
    request = pb.GenerateFeaturesRequest(generator=gen.model.model_uri, class_names=["zebra"], per_class=3, seed=7)
    served = codec.decode_chunks((c.features for c in stub.StreamFeatures(request)), "torch")
    torch.testing.assert_close(synthesize(same.module, ["zebra"], 3, seed=7)[0], served, rtol=0, atol=1e-6)
    other = create_clip("tiny:zsc-tiny-clip", seed=1)  # the same architecture with other weights
    with pytest.raises(FailedPrecondition, match="with other text-encoder weights"):
        models.read_generator(folder, gen.model.model_uri, clip=lambda: other)


# ------------------------------------------------------------------------------------------------------ bad input
def write_unchecked(path: Path, features: torch.Tensor, labels: torch.Tensor, names: list[str], metadata=None) -> None:
    header = {"zsc.featureset": json.dumps({"format": FORMAT, "class_names": names, "metadata": metadata or {}})}
    text = torch.zeros(len(names), features.shape[1])
    save_file({"features": features, "labels": labels, "text_features": text}, path, metadata=header)


def test_bad_input_gets_one_line_errors(pipeline, files: Files, stub, channel) -> None:
    folder = files.folder / "bad"
    folder.mkdir(exist_ok=True)
    train = files.problem.train
    nan = train.features.clone()
    nan[5, 3] = math.nan
    write_unchecked(folder / "nan.safetensors", nan, train.labels, train.class_names, train.metadata)
    FeatureSet(
        torch.randn(8, 24), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), ["a", "b", "c", "d"], torch.randn(4, 24)
    ).save(folder / "d24.safetensors")
    dataclasses.replace(train, metadata={"zsc.views": "3"}).save(folder / "views.safetensors")
    long_name = ("word " * 80).strip()  # too long, without edge whitespace
    long = FeatureSet(torch.randn(2, 32), torch.tensor([0, 1]), ["cat", long_name], torch.randn(2, 32))
    long.save(folder / "long.safetensors")
    novel = pipeline["novel"]
    base_as_novel = FeatureSet(torch.randn(2, 32), torch.tensor([0, 0]), ["apple"], torch.randn(1, 32))
    base_as_novel.save(folder / "apple.safetensors")
    gen = pipeline["generator"].model.model_uri
    pipeline["tune"](pb.TIP_ADAPTER_F)
    tuned = pipeline["tuned"][pb.TIP_ADAPTER_F, True].model.model_uri

    hidden = ship_request(files)
    hidden.settings.hidden_dim = 64
    selection = ship_request(files)
    selection.selection.every = 1
    with_text = ship_request(files)
    with_text.text_features.CopyFrom(codec.encode(torch.randn(20, 32)))
    views = ship_request(files)
    views.features_uri = str(folder / "views.safetensors")

    def ship(**fields: object) -> pb.TrainGeneratorRequest:
        request = ship_request(files)
        for key, value in fields.items():
            setattr(request, key, value)
        return request

    def generate(**fields: object) -> pb.GenerateFeaturesRequest:
        values = {"generator": gen, "class_names": files.new_names, "per_class": 3, **fields}
        return pb.GenerateFeaturesRequest(**values)

    def finetune(**fields: object) -> pb.FineTuneRequest:
        request = finetune_request(files, pb.TIP_ADAPTER_F, novel, epochs=1)
        for key, value in fields.items():
            if isinstance(value, list):
                del getattr(request, key)[:]
                getattr(request, key).extend(value)
            else:
                setattr(request, key, value)
        return request

    nan_lr = finetune()
    nan_lr.settings.lr = math.nan
    bad_fraction = finetune()
    bad_fraction.settings.val_fraction = 1.5
    bad_preset = finetune()
    bad_preset.settings.tip_adapter_preset = "cifar10"
    invalid = {
        # TrainGenerator SHIP_VAE
        "D mismatch": (
            "TrainGenerator",
            ship(features_uri=str(folder / "d24.safetensors")),
            "the features have D=24 but the CLIP model tiny:zsc-tiny-clip encodes D=32",
        ),
        "NaN features": ("TrainGenerator", ship(features_uri=str(folder / "nan.safetensors")), "NaN or Inf"),
        "text features": ("TrainGenerator", with_text, "SHIP_VAE conditions on class names, not text features"),
        "hidden_dim": ("TrainGenerator", hidden, "GeneratorSettings.hidden_dim does not apply to SHIP_VAE"),
        "selection": ("TrainGenerator", selection, "SHIP_VAE trains for a fixed number of epochs"),
        "views": ("TrainGenerator", views, "640 rows do not split into 3 views per image"),
        "long name": (
            "TrainGenerator",
            ship(features_uri=str(folder / "long.safetensors")),
            "does not fit in the text encoder's 77 tokens",
        ),
        "zero epochs": ("TrainGenerator", ship_request(files, epochs=0), "GeneratorSettings.epochs must be >= 1"),
        # GenerateFeatures from a SHIP generator
        "zero per_class": ("GenerateFeatures", generate(per_class=0), "per_class must lie in [1, 1000000], got 0"),
        "text for SHIP": (
            "GenerateFeatures",
            generate(class_names=["x"], text_features=codec.encode(torch.randn(1, 32))),
            "is a SHIP_VAE: it synthesizes from class names alone",
        ),
        "name too long": ("StreamFeatures", generate(class_names=["x " * 99 + "x"]), "does not fit in the text"),
        # FineTune
        "method unset": (
            "FineTune",
            finetune(method=pb.FINE_TUNE_METHOD_UNSPECIFIED),
            "fine-tuning method is unset; expected COOP, CLIP_ADAPTER or TIP_ADAPTER_F",
        ),
        "base of another D": (
            "FineTune",
            finetune(base_features_uri=str(folder / "d24.safetensors")),
            "the base features have D=24 but the CLIP model tiny:zsc-tiny-clip encodes D=32",
        ),
        "novel of another D": (
            "FineTune",
            finetune(novel_features_uri=str(folder / "d24.safetensors")),
            "the base features have D=32 but the novel features have D=24",
        ),
        "novel class unknown": (
            "FineTune",
            finetune(class_names=files.problem.class_names[:15]),
            "novel class 'zebra' is not among the class_names of the request",
        ),
        "base class unknown": (
            "FineTune",
            finetune(class_names=files.problem.class_names[5:]),
            "base class 'apple' has samples but is not among the class_names of the request",
        ),
        "novel is a base class": (
            "FineTune",
            finetune(novel_features_uri=str(folder / "apple.safetensors")),
            "class 'apple' has real base samples and synthesized ones",
        ),
        "NaN base features": ("FineTune", finetune(base_features_uri=str(folder / "nan.safetensors")), "NaN or Inf"),
        "NaN lr": ("FineTune", nan_lr, "FineTuneSettings.lr must be finite, got nan"),
        "bad fraction": ("FineTune", bad_fraction, "FineTuneSettings.val_fraction must be < 1"),
        "bad preset": ("FineTune", bad_preset, "bad tip_adapter_f settings: unknown tip_adapter_preset 'cifar10'"),
        "negative seed": ("FineTune", finetune(seed=-1), "seed must be >= 0"),
        # EvaluateGZSL of a fine-tuned model
        "test of another D": (
            "EvaluateGZSL",
            pb.EvaluateGZSLRequest(classifier=tuned, test_features_uri=str(folder / "d24.safetensors")),
            "the test features have D=24 but classifier",
        ),
    }
    not_found = {
        "no such base file": ("FineTune", finetune(base_features_uri=str(folder / "missing.safetensors"))),
        "no such generator": ("GenerateFeatures", generate(generator="models:/zsc-generator-ship_vae/999")),
        "no such model": (
            "EvaluateGZSL",
            pb.EvaluateGZSLRequest(classifier="models:/zsc-finetune-coop/999", test_features_uri=str(files.test)),
        ),
    }
    ops = common_pb2_grpc.OperationsStub(channel)
    before = len(ops.ListOperations(common_pb2.ListOperationsRequest(page_size=1000)).operations)
    for case, (method, request, message) in invalid.items():
        with pytest.raises(grpc.RpcError) as err:
            reply = getattr(stub, method)(request)
            if method == "StreamFeatures":
                list(reply)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value.details())
        assert message in err.value.details(), (case, err.value.details())
        assert "\n" not in err.value.details(), case
    for case, (method, request) in not_found.items():
        with pytest.raises(grpc.RpcError) as err:
            getattr(stub, method)(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, (case, err.value.details())
        assert "\n" not in err.value.details(), case
    # Every refusal came before a job started.
    assert len(ops.ListOperations(common_pb2.ListOperationsRequest(page_size=1000)).operations) == before


def test_lite_profile_refuses_the_prompt_paths(pipeline, files: Files, server_for) -> None:
    """lite has no CLIP: its text encoder is not aligned with its image features, so SHIP cannot decode."""
    stub = pb_grpc.GenerativeStub(server_for.channel("generative", profile="lite"))
    generate = pb.GenerateFeaturesRequest(
        generator=pipeline["generator"].model.model_uri, class_names=["cat"], per_class=1
    )
    calls = {
        "TrainGenerator": ship_request(files),
        "FineTune": finetune_request(files, pb.COOP, None),
        "StreamFeatures": generate,
    }
    for method, request in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            reply = getattr(stub, method)(request)
            if method == "StreamFeatures":
                list(reply)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (method, err.value.details())
        assert "profile 'lite' has no CLIP model" in err.value.details() and "\n" not in err.value.details()


# ------------------------------------------------------------------------------------------------------------ CLI
def test_cli_train_ship_vae_and_finetune(server, files: Files, capsys) -> None:
    from zsc.cli.main import main

    address = ["--address", f"127.0.0.1:{server.port}"]
    args = [
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--noise-dim",
        "8",
        "--encoder-hidden",
        "32",
        "--generator-hidden",
        "32",
    ]
    code = main(["train-generator", "--features", str(files.train), "--kind", "ship_vae", *args, *address])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "trained ship_vae on 10 of 20 classes (D=32, D_t=32; 2 epochs" in printed
    generator = next(line.split()[1] for line in printed.splitlines() if line.startswith("generator: "))
    novel = files.folder / "cli-novel.safetensors"
    names = ",".join(files.new_names)
    code = main(
        [
            "generate-features",
            "--generator",
            generator,
            "--classes",
            names,
            "--per-class",
            "5",
            "--out",
            str(novel),
            *address,
        ]
    )
    assert code == 0 and "synthesized 50 features (D=32) of 10 classes" in capsys.readouterr().out
    code = main(
        [
            *("finetune", "--base", str(files.train), "--novel", str(novel), "--method", "tip_adapter_f"),
            *("--epochs", "2", "--tip-adapter-preset", "caltech101", "--test", str(files.test), *address),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (
        "fine-tuned tip_adapter_f over 20 classes (10 base, 10 new) on 160 real images x 4 views + 50 synthesized; "
        "kept the last epoch of 2" in printed
    )
    assert "GZSL: S " in printed and "base-to-new: B " in printed
    code = main(["train-generator", "--features", str(files.train), "--kind", "tfvaegan", "--kl-weight", "2", *address])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("zsc: --kl-weight applies to --kind ship_vae only")
