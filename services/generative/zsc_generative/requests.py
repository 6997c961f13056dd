"""Generative requests -> plans, core results -> responses: every check and conversion of the six RPCs.

The ``plan_*`` functions run on the RPC thread: bad input gets INVALID_ARGUMENT, an unknown model NOT_FOUND and a
profile without CLIP FAILED_PRECONDITION before any job starts. A plan holds plain values (tensors, configs, paths,
the loaded models) and the JobPlan the servicer starts; the ``*_response`` functions build the result messages.
Settings are read with ``zsc.config.message_settings`` against the bounds each core config declares.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from google.protobuf import message as pb_message

from zsc import codec, registry, tracking
from zsc.config import message_settings
from zsc.data import check_class_names, duplicate_class, output_file
from zsc.enums import ProtoEnum
from zsc.errors import FailedPrecondition, InvalidArgument, first_line
from zsc.features import (
    ALIGNMENT_ID_KEY,
    FeatureSet,
    alignment_id,
    content_hash,
    read_alignment,
    read_feature_file,
)
from zsc.generative.v1 import generative_pb2 as pb
from zsc.lineage import MD5_TAG, file_digests
from zsc.models.clip import ClipBundle, encode_class_names
from zsc.models.prompt_learner import check_prompts_fit
from zsc.runtime.jobs import JobPlan, lineage_tags
from zsc.runtime.server import ServiceRuntime
from zsc_generative import models
from zsc_generative.core import finetune, ship
from zsc_generative.core.bank import FeatureBank
from zsc_generative.core.common import GeneratorConfig, GeneratorTrainResult, holdout_class_count
from zsc_generative.core.data import FineTuneData, GZSLData, finetune_data, gzsl_data, relabel
from zsc_generative.core.evaluate import GZSLEvaluation
from zsc_generative.core.gzsl import GZSLConfig, GZSLTraining, HoldoutPlan

SERVICE = "zsc.generative.v1.Generative"
TRAIN_GENERATOR_KIND = f"{SERVICE}/TrainGenerator"
GENERATE_KIND = f"{SERVICE}/GenerateFeatures"
TRAIN_GZSL_KIND = f"{SERVICE}/TrainGZSL"
EVALUATE_KIND = f"{SERVICE}/EvaluateGZSL"
FINETUNE_KIND = f"{SERVICE}/FineTune"
EXPERIMENT = "zsc-generative"
GZSL_MODEL_NAME = "zsc-gzsl"
# The .proto comments name each UNSPECIFIED's meaning: the kind and the method are refused, calibration is NONE.
KINDS = ProtoEnum(pb.GeneratorKind, default=None, field="generator kind")
METHODS = ProtoEnum(pb.FineTuneMethod, default=None, field="fine-tuning method")
CALIBRATIONS = ProtoEnum(pb.CalibrationMethod, default="none", field="calibration method", strip="CALIBRATION_")
# GeneratorSettings fields that mean nothing to SHIP_VAE (its widths are in ShipVaeSettings; it has no critic).
SHIP_REFUSED = ("hidden_dim", "critic_iters", "gp_weight")
SELECTION_FIELDS = {f.name: f"select_{f.name}" for f in pb.SelectionSettings.DESCRIPTOR.fields}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
MAX_CLASSES = 100_000
MAX_PER_CLASS = 1_000_000
# Largest features tensor GenerateFeatures/StreamFeatures builds in memory (K classes x per_class x D float32).
MAX_OUTPUT_BYTES = 4 << 30


class Service(Protocol):
    """What planning reads of the GenerativeService (defined in the servicer module, which imports this one)."""

    runtime: ServiceRuntime

    @property
    def device(self) -> torch.device: ...

    def clip_or_fail(self, why: str) -> ClipBundle: ...

    def load_generator(self, reference: str) -> tuple[registry.ResolvedModel, models.LoadedGenerator]: ...

    def load_classifier(self, reference: str) -> tuple[registry.ResolvedModel, models.LoadedClassifier]: ...


# --- shared checks -------------------------------------------------------------------------------------------------
def check_seed(seed: int) -> int:
    if seed < 0:
        raise InvalidArgument(f"seed must be >= 0, got {seed}")
    return int(seed)


def decode_matrix(msg: Any, name: str) -> torch.Tensor:
    """A finite float [rows >= 1, cols >= 1] tensor, widened to float32."""
    x = torch.as_tensor(codec.decode(msg, "torch", dtypes=FLOAT_DTYPES, rank=2, name=name)).float()
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidArgument(f"{name} has shape {list(x.shape)}; it needs at least one row and one column")
    return x


def read_features(uri: str, field: str, roots: list[Path], *, nonempty: str = "") -> tuple[Path, FeatureSet]:
    """Load and validate a features file inside the data roots; ``nonempty`` names it in the error for a file
    without samples (empty: such a file is allowed)."""
    if not uri:
        raise InvalidArgument(f"{field} is empty")
    path, data = read_feature_file(uri, roots, field)
    if data.dim == 0 or data.text_dim == 0:
        raise InvalidArgument(f"{field} {path.name} has D={data.dim} and D_t={data.text_dim}; both must be >= 1")
    if nonempty and len(data) == 0:
        raise InvalidArgument(f"{nonempty} {path.name} has no samples")
    return path, data


def read_novel(uri: str, roots: list[Path], base: FeatureSet, what: str) -> tuple[Path | None, FeatureSet | None]:
    """The optional synthesized features, of the base features' width (``what`` words the shared space)."""
    if not uri:
        return None, None
    path, novel = read_features(uri, "novel_features_uri", roots)
    if novel.dim != base.dim:
        raise InvalidArgument(
            f"the base features have D={base.dim} but the novel features have D={novel.dim}; both must be {what}"
        )
    return path, novel


def without_zero(msg: pb_message.Message, field: str) -> tuple[pb_message.Message, bool]:
    """``msg`` without ``field`` when it is set to 0 (GeneratorSettings.noise_dim: 0 = the kind's default)."""
    if not msg.HasField(field) or getattr(msg, field) != 0:
        return msg, False
    copy = type(msg)()
    copy.CopyFrom(msg)
    copy.ClearField(field)
    return copy, True


def checked(config: Any, what: str) -> Any:
    """``config`` after its own check (the rules beyond single bounds); InvalidArgument names ``what``."""
    try:
        config.check()
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"bad {what} settings: {first_line(err)}") from err
    return config


def model_name(requested: str, default: str) -> str:
    return registry.check_model_name(requested or default)


def dataset_tags(path: Path, data: FeatureSet) -> dict[str, str]:
    """Lineage of a training file (keys without ``zsc.``): its path, sha256, the md5 dvc.lock lists, its upstream."""
    sha256, md5 = file_digests(path, "sha256", "md5")  # one read; a file's DVC md5 is its plain md5
    return {
        "dataset.uri": str(path),
        "dataset.hash": f"sha256:{sha256}",
        MD5_TAG.removeprefix("zsc."): md5,
        **{k.removeprefix("zsc."): v for k, v in upstream_tags(data, "zsc.recovery").items()},
    }


def novel_tags(path: Path | None, novel: FeatureSet | None) -> dict[str, str]:
    """Lineage of the synthesized features: the file and the generator GenerateFeatures recorded in it."""
    if novel is None or path is None:
        return {}
    sha256, md5 = file_digests(path, "sha256", "md5")
    tags = {"novel.uri": str(path), "novel.hash": f"sha256:{sha256}", "novel.md5": md5}
    for key in ("generator_model_uri", "generator_run_id"):
        tags[key.replace("_", ".", 1)] = novel.metadata.get(key, "")
    return tags


def upstream_tags(data: FeatureSet, prefix: str) -> dict[str, str]:
    """Lineage of a features file from its metadata: the MLflow run that wrote it (e.g. a recovery run) and the FLPT
    alignment its features carry (a model trained on them scores only features of that alignment)."""
    tags = {}
    if data.metadata.get("mlflow_run_id"):
        tags[f"{prefix}_run_id"] = data.metadata["mlflow_run_id"]
    if data.metadata.get("zsc.kind"):
        tags[f"{prefix}_kind"] = data.metadata["zsc.kind"]
    if alignment_id(data.metadata):
        tags[ALIGNMENT_ID_KEY] = alignment_id(data.metadata)
    return tags


def trained_alignment(ref: registry.ResolvedModel) -> str:
    """The alignment id of the features a model was trained on, from its training run's lineage ("" if none)."""
    if not ref.run_id:
        return ""
    return tracking.client().get_run(ref.run_id).data.tags.get(ALIGNMENT_ID_KEY, "")


def space(metadata: dict[str, str]) -> str:
    """How an error names a feature set's space."""
    return f"aligned by FLPT alignment {alignment_id(metadata)[:19]}" if alignment_id(metadata) else "unaligned"


def version_message(version: registry.RegisteredVersion | registry.ResolvedModel) -> pb.ModelVersion:
    """A version just registered or a model a request resolved: both name the same five fields."""
    return pb.ModelVersion(
        name=version.name,
        version=version.version,
        run_id=version.run_id,
        model_uri=version.model_uri,
        artifact_uri=version.artifact_uri,
    )


def finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


# --- TrainGenerator ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainGeneratorPlan:
    job: JobPlan
    kind: str  # tfvaegan, clswgan or ship_vae
    data: FeatureSet
    trained: tuple[str, ...]  # the classes with samples
    config: GeneratorConfig | ship.ShipConfig
    train: Callable[..., GeneratorTrainResult]  # train(on_epoch=, should_stop=)
    clip: ClipBundle | None
    model_name: str
    features_hash: str


def plan_train_generator(request: pb.TrainGeneratorRequest, svc: Service) -> TrainGeneratorPlan:
    svc.runtime.require_ready()
    name = KINDS.name(request.kind)
    method = request.WhichOneof("method_settings")
    if method is not None and method != name:
        raise InvalidArgument(f"{method} settings were given for a {name.upper()} generator")
    seed = check_seed(request.seed)
    is_ship = name == models.SHIP_KIND
    clip = svc.clip_or_fail("SHIP_VAE decodes through CLIP's text encoder") if is_ship else None
    path, data, text_digest = generator_features(request, svc.runtime.data_roots, is_ship)
    trained = tuple(data.class_names[i] for i in data.labels.unique(sorted=True).tolist())
    config, train, total = generator_setup(request, name, data, path, trained, clip, seed, svc.device)
    registered = model_name(request.registered_model_name, f"zsc-generator-{name}")
    profile = svc.runtime.profile.name
    tags = {**dataset_tags(path, data), "text_source": "inline" if text_digest else "file"}
    if text_digest:
        tags["text.hash"] = f"sha256:{text_digest}"
    if clip is not None:
        tags["clip"] = clip.ref
    params = {
        "kind": name,
        **config.to_dict(),
        "features_uri": str(path),
        "n_features": len(data),
        "feature_dim": data.dim,
        "text_dim": data.text_dim,
        "n_classes": data.num_classes,
        "n_trained_classes": len(trained),
        "profile": profile,
        "registered_model_name": registered,
    }
    experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
    job = JobPlan(
        TRAIN_GENERATOR_KIND,
        experiment,
        f"train-generator-{name}",
        params,
        lineage_tags(f"generator-{name}", profile, seed, **tags),
        total=total,
        unit="epochs",
    )
    features_hash = tags["dataset.hash"].removeprefix("sha256:")
    return TrainGeneratorPlan(job, name, data, trained, config, train, clip, registered, features_hash)


def generator_features(
    request: pb.TrainGeneratorRequest, roots: list[Path], is_ship: bool
) -> tuple[Path, FeatureSet, str]:
    """The training file, its text features replaced by the request's inline ones (then their sha256, else "")."""
    path, data = read_features(request.features_uri, "features_uri", roots)
    text_digest = ""
    if request.HasField("text_features"):
        if is_ship:
            raise InvalidArgument("SHIP_VAE conditions on class names, not text features; leave text_features empty")
        text = decode_matrix(request.text_features, "text_features")
        if text.shape[0] != data.num_classes:
            raise InvalidArgument(
                f"text_features has {text.shape[0]} rows but the features file lists {data.num_classes} classes; "
                "send one row per class of the file, in its order"
            )
        data.text_features = text
        text_digest = hashlib.sha256(request.text_features.data).hexdigest()
    if len(data) == 0:
        raise InvalidArgument(f"features file {path.name} has no samples to train on")
    return path, data, text_digest


def generator_setup(
    request: pb.TrainGeneratorRequest,
    name: str,
    data: FeatureSet,
    path: Path,
    trained: Sequence[str],
    clip: ClipBundle | None,
    seed: int,
    device: torch.device,
) -> tuple[GeneratorConfig | ship.ShipConfig, Callable[..., GeneratorTrainResult], int]:
    """The kind's config, its training call (``train(on_epoch=, should_stop=)``) and the epochs it reports."""
    if clip is not None:
        config = ship_config(request, seed)
        check_ship_data(data, path, clip, trained, config)
        return config, functools.partial(ship.train_ship_vae, clip.model, clip.tokenizer, data, config), config.epochs
    kind = models.KINDS[name]
    gan = generator_config(kind, request, seed)
    if gan.select_every > 0 and len(trained) < 2:
        raise InvalidArgument(
            f"selection holds out pseudo-novel classes and needs at least 2 trained classes; "
            f"features file {path.name} has samples of {len(trained)}"
        )
    total = gan.epochs * (2 if gan.select_every > 0 and gan.select_refit else 1)  # selection with refit trains twice
    return gan, functools.partial(kind.train, data, gan, device=device), total


def generator_config(kind: models.GeneratorKind, request: pb.TrainGeneratorRequest, seed: int) -> GeneratorConfig:
    """The core config of ``kind``: unset fields keep its defaults (methods.md's for TF-VAEGAN)."""
    msg, text_width = without_zero(request.settings, "noise_dim")
    kwargs = message_settings(msg, kind.config_cls)
    if text_width:
        kwargs["noise_dim"] = None  # 0 = the text-feature width
    kwargs.update(message_settings(request.selection, kind.config_cls, SELECTION_FIELDS))
    method = request.WhichOneof("method_settings")
    if method is not None:
        kwargs.update(message_settings(getattr(request, method), kind.config_cls))
    return checked(kind.config_cls(seed=seed, **kwargs), kind.name)


def ship_config(request: pb.TrainGeneratorRequest, seed: int) -> ship.ShipConfig:
    """ShipConfig from GeneratorSettings (the fields that apply) and ShipVaeSettings; methods.md's defaults else."""
    refused = [f for f in SHIP_REFUSED if request.settings.HasField(f)]
    if refused:
        raise InvalidArgument(
            f"GeneratorSettings.{refused[0]} does not apply to SHIP_VAE; set its widths in ShipVaeSettings"
        )
    if request.selection.ListFields():
        raise InvalidArgument(
            "SHIP_VAE trains for a fixed number of epochs and takes no selection settings (the last epoch is kept, "
            "as in the released protocol)"
        )
    msg, _ = without_zero(request.settings, "noise_dim")  # its latent width; 0 keeps the default
    kwargs = message_settings(msg, ship.ShipConfig, {"noise_dim": "latent_dim"})
    kwargs.update(message_settings(request.ship_vae, ship.ShipConfig))
    return checked(ship.ShipConfig(seed=seed, **kwargs), "ship_vae")


def check_ship_data(
    data: FeatureSet, path: Path, clip: ClipBundle, trained: Sequence[str], config: ship.ShipConfig
) -> None:
    """INVALID_ARGUMENT now for a features file SHIP's VAE cannot train on through ``clip``."""
    if data.dim != clip.embed_dim:
        raise InvalidArgument(
            f"the features have D={data.dim} but the CLIP model {clip.ref} encodes D={clip.embed_dim}; SHIP_VAE "
            "reconstructs image features with CLIP's text encoder"
        )
    try:
        FeatureBank.from_feature_set(data)
        check_ship_prompts(clip, trained, config.n_ctx)
    except ValueError as err:
        raise InvalidArgument(f"features_uri {path.name}: {first_line(err)}") from err


def check_ship_prompts(clip: ClipBundle, names: Sequence[str], n_ctx: int) -> None:
    """ValueError unless each name fits CLIP's context behind SHIP's ``n_ctx`` learned tokens."""
    check_prompts_fit(clip.tokenizer, [f"{' '.join(['X'] * n_ctx)} {n}." for n in names], list(names))


def train_generator_response(
    plan: TrainGeneratorPlan, result: GeneratorTrainResult, version: registry.RegisteredVersion
) -> pb.TrainGeneratorResult:
    return pb.TrainGeneratorResult(
        model=version_message(version),
        kind=pb.GeneratorKind.ValueType(KINDS.value(plan.kind)),
        feature_dim=result.feature_dim,
        text_dim=result.text_dim,
        class_names=plan.data.class_names,
        trained_classes=plan.trained,
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        final_metrics=finite(result.final_metrics()),
        features_sha256=plan.features_hash,
    )


# --- GenerateFeatures / StreamFeatures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationPlan:
    """A validated GenerateFeatures/StreamFeatures request."""

    ref: registry.ResolvedModel
    generator: models.LoadedGenerator
    class_names: tuple[str, ...]
    text: torch.Tensor  # [K, D_t]; SHIP_VAE: CLIP's zero-shot text features of the names
    per_class: int
    seed: int

    @property
    def from_names(self) -> bool:
        return self.generator.kind == models.SHIP_KIND


def plan_generation(request: pb.GenerateFeaturesRequest, svc: Service) -> GenerationPlan:
    svc.runtime.require_ready()
    if request.per_class < 1 or request.per_class > MAX_PER_CLASS:
        raise InvalidArgument(f"per_class must lie in [1, {MAX_PER_CLASS}], got {request.per_class}")
    seed = check_seed(request.seed)
    names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
    ref, gen = svc.load_generator(request.generator)
    if gen.kind == models.SHIP_KIND:
        if request.HasField("text_features"):
            raise InvalidArgument(
                f"generator {ref.model_uri} is a SHIP_VAE: it synthesizes from class names alone; leave "
                "text_features empty"
            )
        clip = svc.clip_or_fail("SHIP_VAE generators decode through CLIP's text encoder")
        check_ship_prompts(clip, names, gen.module.prompt.n_ctx)
        text = encode_class_names(clip.model, clip.tokenizer, names)
    elif request.HasField("text_features"):
        text = decode_matrix(request.text_features, "text_features")
        if text.shape[1] != gen.text_dim:
            raise InvalidArgument(
                f"text_features have D_t={text.shape[1]} but generator {ref.model_uri} conditions on "
                f"D_t={gen.text_dim}: a generator trains on text features of any width and generates only from "
                "text features of that width"
            )
        if text.shape[0] != len(names):
            raise InvalidArgument(f"text_features has {text.shape[0]} rows for {len(names)} class_names")
    else:
        text = gen.text_of(names, ref.model_uri)
    nbytes = len(names) * request.per_class * gen.feature_dim * 4
    if nbytes > MAX_OUTPUT_BYTES:
        raise InvalidArgument(
            f"{len(names)} classes x {request.per_class} features x D={gen.feature_dim} needs "
            f"{nbytes / 2**30:.1f} GiB, over the limit of {MAX_OUTPUT_BYTES / 2**30:.0f} GiB; split the request"
        )
    return GenerationPlan(ref, gen, tuple(names), text, int(request.per_class), seed)


@dataclass(frozen=True)
class GenerateFeaturesPlan:
    """GenerateFeatures: no MLflow run, the output file's metadata is its lineage."""

    generation: GenerationPlan
    out: Path
    metadata: dict[str, str]  # the output file's


def plan_generate_features(request: pb.GenerateFeaturesRequest, svc: Service) -> GenerateFeaturesPlan:
    plan = plan_generation(request, svc)
    out = output_file(request.output_uri, svc.runtime.data_roots)
    metadata = {
        "zsc.kind": "generated-features",
        "generator_model_uri": plan.ref.model_uri,
        "generator_run_id": plan.ref.run_id,
        "generator_kind": plan.generator.kind,
        "per_class": str(plan.per_class),
        "seed": str(plan.seed),
        "profile": svc.runtime.profile.name,
    }
    if aligned := trained_alignment(plan.ref):
        metadata[ALIGNMENT_ID_KEY] = aligned  # synthesized in the (aligned) space the generator was trained in
    return GenerateFeaturesPlan(plan, out, metadata)


def generated_features(plan: GenerateFeaturesPlan, x: torch.Tensor, y: torch.Tensor) -> FeatureSet:
    gen = plan.generation
    return FeatureSet(x, y, list(gen.class_names), gen.text.float().cpu(), plan.metadata)


def generate_features_response(plan: GenerateFeaturesPlan, n_features: int) -> pb.GenerateFeaturesResult:
    gen = plan.generation
    return pb.GenerateFeaturesResult(
        features_uri=str(plan.out),
        class_names=gen.class_names,
        n_features=n_features,
        feature_dim=gen.generator.feature_dim,
        generator=version_message(gen.ref),
        features_sha256=content_hash(plan.out),
    )


def feature_chunks(plan: GenerationPlan, x: torch.Tensor, active: Callable[[], bool]) -> Any:
    """StreamFeatures' messages: the class list and per_class in the first, until the client goes away."""
    for i, chunk in enumerate(codec.encode_chunks(x)):
        if not active():  # the client went away: stop encoding
            return
        if i == 0:
            yield pb.FeatureChunk(class_names=plan.class_names, per_class=plan.per_class, features=chunk)
        else:
            yield pb.FeatureChunk(features=chunk)


# --- TrainGZSL -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationPlan:
    """A validated CALIBRATION_HOLDOUT request: the generator copied and the core's holdout inputs."""

    ref: registry.ResolvedModel  # the generator whose kind and settings are copied
    holdout: HoldoutPlan


@dataclass(frozen=True)
class TrainGZSLPlan:
    job: JobPlan
    data: GZSLData
    config: GZSLConfig
    calibration: CalibrationPlan | None
    model_name: str
    feature_dim: int

    @property
    def offset(self) -> int:
        """Progress units the calibration's generator takes before the classifier's epochs."""
        return self.calibration.holdout.total_epochs if self.calibration is not None else 0


def plan_train_gzsl(request: pb.TrainGZSLRequest, svc: Service) -> TrainGZSLPlan:
    svc.runtime.require_ready()
    roots = svc.runtime.data_roots
    seed = check_seed(request.seed)
    base_path, base = read_features(
        request.base_features_uri, "base_features_uri", roots, nonempty="base features file"
    )
    if request.class_names or request.HasField("text_features"):
        if not request.class_names or not request.HasField("text_features"):
            raise InvalidArgument("give class_names and text_features together, or neither to use the base file's")
        names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
        text = decode_matrix(request.text_features, "text_features")
        if text.shape[0] != len(names):
            raise InvalidArgument(f"text_features has {text.shape[0]} rows for {len(names)} class_names")
        source = "the class_names of the request"
    else:
        names, text = tuple(base.class_names), base.text_features
        source = f"the classes of base file {base_path.name}"
    what = "image features of one space (text features may have any D_t, features may not)"
    novel_path, novel = read_novel(request.novel_features_uri, roots, base, what)
    if novel is not None and novel_path is not None and alignment_id(novel.metadata) != alignment_id(base.metadata):
        raise FailedPrecondition(
            f"base features {base_path.name} are {space(base.metadata)} but novel features {novel_path.name} "
            f"are {space(novel.metadata)}; both must lie in one feature space"
        )
    data = gzsl_data(base, novel, names, text, source)
    config = checked(GZSLConfig(seed=seed, **message_settings(request.settings, GZSLConfig)), "GZSL")
    cal = plan_calibration(request, data, base, novel, seed, svc)
    registered = model_name(request.registered_model_name, GZSL_MODEL_NAME)
    profile = svc.runtime.profile.name
    tags = {**dataset_tags(base_path, base), **novel_tags(novel_path, novel)}
    if request.HasField("text_features"):
        tags["text.hash"] = f"sha256:{hashlib.sha256(request.text_features.data).hexdigest()}"
    params = {
        **config.to_dict(),
        "calibration": CALIBRATIONS.name(request.calibration.method),
        "base_features_uri": str(base_path),
        "novel_features_uri": str(novel_path or ""),
        "n_base": len(base),
        "n_novel": data.n_novel,
        "n_classes": len(names),
        "n_seen": len(data.seen),
        "feature_dim": base.dim,
        "text_dim": int(text.shape[1]),
        "profile": profile,
        "registered_model_name": registered,
    }
    if cal is not None:
        tags["calibration.generator"] = cal.ref.model_uri
        del params["calibration_gamma"]  # chosen in the job, logged then (MLflow params are write-once)
        params.update(
            {
                "calibration_holdout_fraction": cal.holdout.holdout_fraction,
                "calibration_val_fraction": cal.holdout.val_fraction,
                "calibration_n_per_class": cal.holdout.n_per_class,
                "calibration_generator": cal.ref.model_uri,
            }
        )
    total = (cal.holdout.total_epochs if cal is not None else 0) + config.epochs
    experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
    tagged = lineage_tags("gzsl", profile, seed, **tags)
    job = JobPlan(TRAIN_GZSL_KIND, experiment, "train-gzsl", params, tagged, total=total, unit="epochs")
    return TrainGZSLPlan(job, data, config, cal, registered, base.dim)


def calibration_fractions(cal: pb.CalibrationSettings) -> dict[str, float]:
    """CalibrationSettings' fractions, each in (0, 1), default 0.2; n_per_class range-checked too."""
    fractions = {}
    for field in ("holdout_fraction", "val_fraction"):
        value = getattr(cal, field) if cal.HasField(field) else 0.2
        if not 0.0 < value < 1.0:  # NaN fails too
            raise InvalidArgument(f"CalibrationSettings.{field} must lie in (0, 1), got {value}")
        fractions[field] = value
    if not 0 <= cal.n_per_class <= MAX_PER_CLASS:
        raise InvalidArgument(
            f"CalibrationSettings.n_per_class must lie in [0, {MAX_PER_CLASS}], got {cal.n_per_class}"
        )
    return fractions


def plan_calibration(
    request: pb.TrainGZSLRequest,
    data: GZSLData,
    base: FeatureSet,
    novel: FeatureSet | None,
    seed: int,
    svc: Service,
) -> CalibrationPlan | None:
    """The checked CALIBRATION_HOLDOUT plan, or None for CALIBRATION_NONE (its settings are range-checked too)."""
    cal = request.calibration
    method = CALIBRATIONS.name(cal.method)
    fractions = calibration_fractions(cal)
    if method != "holdout":
        if cal.generator:  # a setting that would change nothing is a mistake worth naming
            raise InvalidArgument("calibration.generator is used only with CALIBRATION_HOLDOUT")
        return None
    if request.settings.HasField("calibration_gamma"):
        raise InvalidArgument(
            "calibration HOLDOUT chooses calibration_gamma itself; leave settings.calibration_gamma unset"
        )
    if novel is None:
        raise InvalidArgument("calibration HOLDOUT needs novel_features_uri: it calibrates against synthesized classes")
    seen, names, text = data.seen, data.names, data.text
    if len(seen) < 2:
        raise InvalidArgument(f"calibration HOLDOUT holds out base classes and needs at least 2, got {len(seen)}")
    reference = cal.generator or novel.metadata.get("generator_model_uri", "")
    if not reference:
        raise InvalidArgument(
            "calibration HOLDOUT needs a generator to copy: the novel features name none (GenerateFeatures "
            "records it); set calibration.generator"
        )
    ref, gen = svc.load_generator(reference)
    kind = models.KINDS.get(gen.kind)
    if kind is None or not isinstance(gen.config, GeneratorConfig):
        raise FailedPrecondition(
            f"calibration HOLDOUT trains a TFVAEGAN or CLSWGAN generator; {ref.model_uri} is a {gen.kind}"
        )
    config = replace(gen.config, seed=seed)
    fit_classes = len(seen) - holdout_class_count(len(seen), fractions["holdout_fraction"])
    if config.select_every > 0 and fit_classes < 2:
        raise InvalidArgument(
            f"generator {ref.model_uri} selects its epoch on held-out classes, which needs 2 of the "
            f"{fit_classes} base classes that calibration HOLDOUT leaves it; lower holdout_fraction"
        )
    base_names = [names[i] for i in seen]
    known = set(gen.class_names)
    if all(n in known for n in base_names):  # what the copied generator conditioned on
        gen_text = gen.text_of(base_names, ref.model_uri)
    elif text.shape[1] == gen.text_dim:
        gen_text = text[seen]
    else:
        missing = next(n for n in base_names if n not in known)
        raise FailedPrecondition(
            f"generator {ref.model_uri} stores no text feature of base class {missing!r} and the request's text "
            f"features have D_t={text.shape[1]} where it conditions on D_t={gen.text_dim}"
        )
    local = torch.full((len(names),), -1, dtype=torch.int64)
    local[seen] = torch.arange(len(seen))
    holdout = HoldoutPlan(
        train=kind.train,
        config=config,
        data=FeatureSet(base.features, local[data.base_labels], base_names, gen_text.float()),
        classifier_text=text[seen].float(),
        holdout_fraction=fractions["holdout_fraction"],
        val_fraction=fractions["val_fraction"],
        n_per_class=cal.n_per_class or int(torch.bincount(novel.labels).max()),
    )
    return CalibrationPlan(ref, holdout)


def pseudo_unseen(plan: TrainGZSLPlan, training: GZSLTraining) -> list[str]:
    """The base classes the calibration held out as unseen (none without calibration)."""
    if training.calibration is None or plan.calibration is None:
        return []
    names = plan.calibration.holdout.data.class_names
    return [names[i] for i in training.calibration.pseudo_novel]


def train_gzsl_response(
    plan: TrainGZSLPlan, training: GZSLTraining, version: registry.RegisteredVersion
) -> pb.TrainGZSLResult:
    cal = training.calibration
    calibration = None
    if cal is not None and plan.calibration is not None:
        calibration = pb.CalibrationResult(
            method=pb.CALIBRATION_HOLDOUT,
            gamma=cal.gamma,
            harmonic=cal.harmonic,
            harmonic_uncalibrated=cal.harmonic_uncalibrated,
            pseudo_unseen=pseudo_unseen(plan, training),
            generator=version_message(plan.calibration.ref),
        )
    return pb.TrainGZSLResult(
        model=version_message(version),
        class_names=plan.data.names,
        seen_indices=plan.data.seen,
        novel_indices=plan.data.novel,
        n_base=int(plan.data.base_labels.numel()),
        n_novel=plan.data.n_novel,
        feature_dim=plan.feature_dim,
        final_loss=training.final_loss,
        calibration=calibration,
    )


# --- EvaluateGZSL --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluatePlan:
    job: JobPlan
    ref: registry.ResolvedModel
    classifier: models.LoadedClassifier
    test: FeatureSet
    labels: torch.Tensor  # indices into the classifier's classes
    seen: list[int]
    unseen: list[int]
    gamma: float
    test_hash: str
    path: Path


def plan_evaluate(request: pb.EvaluateGZSLRequest, svc: Service) -> EvaluatePlan:
    svc.runtime.require_ready()
    roots = svc.runtime.data_roots
    ref, clf = svc.load_classifier(request.classifier)
    path, test = read_features(request.test_features_uri, "test_features_uri", roots, nonempty="test features file")
    test = align_test_features(request.alignment_uri, test, path, ref, roots)
    if test.dim != clf.feature_dim:
        raise InvalidArgument(
            f"the test features have D={test.dim} but classifier {ref.model_uri} scores D={clf.feature_dim}"
        )
    names = clf.class_names
    position = {n: i for i, n in enumerate(names)}
    y = relabel(test, position, lambda n: f"test class {n!r} is not one of the {len(names)} classifier classes")
    unseen = split_unseen(request, names, clf.seen)
    unseen_set = set(unseen)
    seen = [i for i in range(len(names)) if i not in unseen_set]
    if not seen:
        raise InvalidArgument("the split leaves no seen class; name only the unseen classes")
    gamma = clf.calibration_gamma
    if request.HasField("calibration_gamma"):
        if not math.isfinite(request.calibration_gamma):
            raise InvalidArgument(f"calibration_gamma must be finite, got {request.calibration_gamma}")
        gamma = request.calibration_gamma
    test_hash = content_hash(path)
    tags = {"model_uri": ref.model_uri, "dataset.uri": str(path), "dataset.hash": f"sha256:{test_hash}"}
    tags["alignment.id"] = alignment_id(test.metadata)
    params = {
        "classifier": ref.model_uri,
        "test_features_uri": str(path),
        "n_samples": len(test),
        "calibration_gamma": gamma,
        "unseen_classes": ",".join(names[i] for i in unseen)[:6000],
    }
    experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
    tagged = lineage_tags("gzsl-eval", svc.runtime.profile.name, None, **tags)
    job = JobPlan(EVALUATE_KIND, experiment, "evaluate-gzsl", params, tagged, total=1, unit="evaluations")
    return EvaluatePlan(job, ref, clf, test, y, seen, unseen, gamma, test_hash, path)


def align_test_features(
    uri: str, test: FeatureSet, path: Path, ref: registry.ResolvedModel, roots: list[Path]
) -> FeatureSet:
    """The test features moved by the alignment at ``uri`` (when given), checked against the classifier's lineage:
    FailedPrecondition when they lie in another space than the features it was trained on."""
    if uri:
        align_path, alignment = read_alignment(uri, roots)
        if alignment_id(test.metadata):
            raise FailedPrecondition(
                f"test features {path.name} are already {space(test.metadata)}; leave alignment_uri empty"
            )
        if test.dim != alignment.dim:
            raise InvalidArgument(
                f"the test features have D={test.dim} but alignment {align_path.name} has D={alignment.dim}"
            )
        test = alignment.apply(test, text=False)  # the classifier holds its own class weights
    trained = {ALIGNMENT_ID_KEY: trained_alignment(ref)}
    if alignment_id(test.metadata) != alignment_id(trained):
        hint = "; pass the alignment Align wrote as alignment_uri" if alignment_id(trained) and not uri else ""
        raise FailedPrecondition(
            f"classifier {ref.model_uri} was trained on features that are {space(trained)} but test features "
            f"{path.name} are {space(test.metadata)}{hint}"
        )
    return test


def split_unseen(request: pb.EvaluateGZSLRequest, names: list[str], trained_seen: list[int]) -> list[int]:
    """Unseen class indices by name or index (not both); neither: the classes the classifier had no base data of."""
    if request.unseen_classes and request.unseen_indices:
        raise InvalidArgument("give unseen_classes or unseen_indices, not both")
    position = {n: i for i, n in enumerate(names)}
    if request.unseen_classes:
        unseen = []
        for name in request.unseen_classes:
            if name not in position:
                raise InvalidArgument(f"unseen class {name!r} is not one of the {len(names)} classifier classes")
            unseen.append(position[name])
    elif request.unseen_indices:
        unseen = list(request.unseen_indices)
        bad = [i for i in unseen if not 0 <= i < len(names)]
        if bad:
            raise InvalidArgument(f"unseen index {bad[0]} is outside [0, {len(names)})")
    else:
        known = set(trained_seen)
        unseen = [i for i in range(len(names)) if i not in known]
    listed: set[int] = set()
    for i in unseen:
        if i in listed:
            raise InvalidArgument(duplicate_class(names[i], "the unseen classes"))
        listed.add(i)
    if not unseen:
        raise InvalidArgument("the split has no unseen class; name the unseen classes")
    return sorted(unseen)


def evaluate_response(plan: EvaluatePlan, result: GZSLEvaluation, run_id: str) -> pb.EvaluateGZSLResult:
    gz, bn = result.gzsl, result.base_new
    return pb.EvaluateGZSLResult(
        gzsl=pb.GZSLMetrics(seen=gz.seen, unseen=gz.unseen, harmonic=gz.harmonic),
        base_to_new=pb.BaseNewMetrics(
            base=bn.base,
            new=bn.new,
            harmonic=bn.harmonic,
            base_per_class=bn.base_per_class,
            new_per_class=bn.new_per_class,
        ),
        class_names=plan.classifier.class_names,
        per_class_accuracy=result.per_class,
        support=result.support,
        seen_indices=plan.seen,
        unseen_indices=plan.unseen,
        n_samples=len(plan.test),
        classifier=version_message(plan.ref),
        mlflow_run_id=run_id,
    )


# --- FineTune ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineTunePlan:
    job: JobPlan
    method: str
    clip: ClipBundle
    data: FineTuneData
    config: finetune.FineTuneConfig
    model_name: str
    feature_dim: int


def plan_finetune(request: pb.FineTuneRequest, svc: Service) -> FineTunePlan:
    svc.runtime.require_ready()
    method = METHODS.name(request.method)
    clip = svc.clip_or_fail("fine-tuning scores image features against CLIP's text features")
    seed = check_seed(request.seed)
    roots = svc.runtime.data_roots
    base_path, base = read_features(
        request.base_features_uri, "base_features_uri", roots, nonempty="base features file"
    )
    if base.dim != clip.embed_dim:
        raise InvalidArgument(
            f"the base features have D={base.dim} but the CLIP model {clip.ref} encodes D={clip.embed_dim}"
        )
    try:
        bank = FeatureBank.from_feature_set(base)
    except ValueError as err:
        raise InvalidArgument(f"base features file {base_path.name}: {first_line(err)}") from err
    novel_path, novel = read_novel(request.novel_features_uri, roots, base, "CLIP image features of one space")
    if novel is not None and novel_path is not None and len(novel) == 0:
        raise InvalidArgument(f"novel features file {novel_path.name} has no samples")
    if request.class_names:
        names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
        source = "the class_names of the request"
    else:
        known = set(base.class_names)
        extra = [n for n in (novel.class_names if novel is not None else []) if n not in known]
        names = check_class_names([*base.class_names, *extra], "the files' class names", MAX_CLASSES)
        source = "the classes of the features files"
    data = finetune_data(bank, base, novel, names, source)
    config = finetune_config(method, request.settings, seed)
    try:
        check_finetune_prompts(clip, names, config)
    except ValueError as err:
        raise InvalidArgument(first_line(err)) from err
    registered = model_name(request.registered_model_name, f"zsc-finetune-{method}")
    profile = svc.runtime.profile.name
    tags = {
        **dataset_tags(base_path, base),
        "clip": clip.ref,
        "synthetic": "true" if novel is not None else "false",
        **novel_tags(novel_path, novel),
    }
    params = {
        **config.to_dict(),
        "base_features_uri": str(base_path),
        "novel_features_uri": str(novel_path or ""),
        "n_images": data.bank.images,
        "views": data.bank.views,
        "n_synthetic": len(novel) if novel is not None else 0,
        "n_classes": len(names),
        "n_base": len(data.base),
        "feature_dim": base.dim,
        "clip": clip.ref,
        "profile": profile,
        "registered_model_name": registered,
    }
    experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
    tagged = lineage_tags(f"finetune-{method}", profile, seed, **tags)
    job = JobPlan(FINETUNE_KIND, experiment, f"finetune-{method}", params, tagged, total=config.epochs, unit="epochs")
    return FineTunePlan(job, method, clip, data, config, registered, base.dim)


def finetune_config(method: str, msg: pb.FineTuneSettings, seed: int) -> finetune.FineTuneConfig:
    """The method's defaults under the fields set in the request."""
    kwargs = message_settings(msg, finetune.FineTuneConfig)
    try:
        config = finetune.FineTuneConfig.for_method(method, seed=seed, **kwargs)
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"bad {method} settings: {first_line(err)}") from err
    return checked(config, method)


def check_finetune_prompts(clip: ClipBundle, names: Sequence[str], config: finetune.FineTuneConfig) -> None:
    """ValueError unless every class's prompt fits CLIP's context (CoOp's learned prefix, or the template)."""
    if config.method == "coop":
        prompts = [f"{config.ctx_init} {n}." for n in names]
    else:
        prompts = [config.template.format(n) for n in names]
    check_prompts_fit(clip.tokenizer, prompts, list(names))


def finetune_response(
    plan: FineTunePlan, result: finetune.FineTuneResult, version: registry.RegisteredVersion
) -> pb.FineTuneResult:
    return pb.FineTuneResult(
        model=version_message(version),
        method=pb.FineTuneMethod.ValueType(METHODS.value(plan.method)),
        class_names=plan.data.names,
        base_indices=plan.data.base,
        new_indices=plan.data.new,
        n_fit=result.n_fit,
        n_val=result.n_val,
        n_synthetic=result.n_synthetic,
        views=plan.data.bank.views,
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        val_accuracy=result.val_accuracy,
        final_metrics=finite({**result.history[-1], **result.extra}),
        feature_dim=plan.feature_dim,
    )
