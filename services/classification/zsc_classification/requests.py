"""Classification requests -> plans, results -> responses: every check and conversion of the six RPCs of the
classification service (Classification, Downstream and Features).

The ``plan_*`` functions run on the RPC thread: bad input gets INVALID_ARGUMENT (FAILED_PRECONDITION for what the
profile lacks, NOT_FOUND for a missing dataset) before any job starts. A plan holds plain values (datasets, configs,
decoded images, paths) and, for the long RPCs, the JobPlan the servicer starts; the ``*_response`` functions turn a
core's result into the response message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zsc import codec, registry, tracking
from zsc.classification.v1 import classification_pb2 as cls_pb
from zsc.classification.v1 import downstream_pb2 as ds_pb
from zsc.classification.v1 import features_pb2 as feat_pb
from zsc.data import ImageFolder, output_file, resolve_uri
from zsc.errors import InvalidArgument
from zsc.features import ALIGNMENT_ID_KEY, Alignment, read_alignment
from zsc.models.clip import DEFAULT_TEMPLATE
from zsc.models.lite import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from zsc.runtime.jobs import JobPlan, lineage_tags
from zsc.runtime.server import ServiceRuntime
from zsc_classification.core import downstream as train_core
from zsc_classification.core.evaluate import FolderEvaluation
from zsc_classification.core.extract import ExtractionResult, Extractors, default_cache_dir
from zsc_classification.core.prompts import validate_class_names
from zsc_classification.zeroshot import ZeroShotMethod

ZEROSHOT_EVAL_KIND = "zsc.classification.v1.Classification/EvaluateZeroShot"
TRAIN_KIND = "zsc.classification.v1.Downstream/TrainClassifier"
EVALUATE_KIND = "zsc.classification.v1.Downstream/Evaluate"
FEATURES_KIND = "zsc.classification.v1.Features/ExtractFeatures"
ZEROSHOT_EXPERIMENT = "zsc-zeroshot"
DOWNSTREAM_EXPERIMENT = "zsc-downstream"
FEATURES_EXPERIMENT = "zsc-features"
MAX_INLINE_IMAGES = 256
MAX_INLINE_DIFFUSION_IMAGES = 16  # each costs thousands of UNet passes: datasets go through EvaluateZeroShot
DEFAULT_TOP_K = 5
DEFAULT_FEATURES_BATCH = 64
MAX_FEATURES_BATCH = 1024

# (method enum, class names, prompts, diffusion options) -> the method, ready for that class set
MethodFactory = Callable[[int, tuple[str, ...], cls_pb.PromptSpec, cls_pb.DiffusionOptions], ZeroShotMethod]
ImageDecoder = Callable[..., Image.Image]


# --- shared checks ---------------------------------------------------------------------------------------------------
def _check_image_count(images: Sequence[Any], limit: int, hint: str = "") -> None:
    if not images:
        raise InvalidArgument("no images in the request")
    if len(images) > limit:
        raise InvalidArgument(f"{len(images)} inline images is over the limit of {limit}{hint}")


def _decode_all(images: Sequence[Any], decode: ImageDecoder) -> tuple[Image.Image, ...]:
    return tuple(decode(im.data, what=f"image {i}") for i, im in enumerate(images))


def _top_k(value: int) -> int:
    """Labels per image (0 means the default); the caller caps it at the class count."""
    if value < 0:
        raise InvalidArgument("top_k must be >= 0")
    return value or DEFAULT_TOP_K


def _folder_params(folder: ImageFolder) -> dict[str, str]:
    return {"folder_to_class": json.dumps(folder.mapped_folders())} if folder.mapped_folders() else {}


def _evaluation_fields(result: FolderEvaluation, class_names: Sequence[str], run_id: str) -> dict[str, Any]:
    """The fields EvaluationResult and ModelEvaluation share."""
    return {
        "class_names": class_names,
        "n_images": len(result.labels),
        "top1": result.top1,
        "macro_accuracy": result.macro,
        "per_class_accuracy": result.per_class,
        "confusion": codec.encode(result.confusion),
        "mlflow_run_id": run_id,
        "seconds_per_image": result.seconds_per_image,
    }


# --- Classification/ZeroShot ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZeroShotPlan:
    method: ZeroShotMethod
    class_names: tuple[str, ...]
    images: tuple[Image.Image, ...]
    k: int


def plan_zero_shot(request: cls_pb.ZeroShotRequest, methods: MethodFactory, decode: ImageDecoder) -> ZeroShotPlan:
    class_names = validate_class_names(list(request.class_names))
    limit = MAX_INLINE_DIFFUSION_IMAGES if request.method == cls_pb.DIFFUSION else MAX_INLINE_IMAGES
    _check_image_count(request.images, limit, "; use EvaluateZeroShot with a dataset reference")
    k = min(_top_k(request.top_k), len(class_names))
    method = methods(request.method, class_names, request.prompts, request.diffusion)
    return ZeroShotPlan(method, class_names, _decode_all(request.images, decode), k)


def zero_shot_response(plan: ZeroShotPlan, records: list[dict[str, Any]]) -> cls_pb.ZeroShotResponse:
    names = plan.class_names
    if plan.method.name == "clip":
        logits = torch.tensor([r["logits"] for r in records], dtype=torch.float32)
        probs = logits.softmax(dim=-1)
        top = probs.topk(plan.k, dim=-1)
        return cls_pb.ZeroShotResponse(
            logits=codec.encode(logits),
            probs=codec.encode(probs),
            top_k=[_ranked(cls_pb.TopK, idx.tolist(), names, p.tolist()) for p, idx in zip(*top, strict=True)],
        )
    results = [_diffusion_result(r, names) for r in records]
    return cls_pb.ZeroShotResponse(
        top_k=[_ranked(cls_pb.TopK, _elimination_order(r)[: plan.k], names) for r in results], diffusion=results
    )


def _ranked(message: Any, indices: list[int], class_names: Sequence[str], probs: list[float] | None = None) -> Any:
    """A TopK / RankedLabels message: the class indices, their names and (CLIP, downstream) their probabilities."""
    return message(indices=indices, labels=[class_names[j] for j in indices], probs=probs or [])


def _diffusion_result(record: dict[str, Any], class_names: tuple[str, ...]) -> cls_pb.DiffusionImageResult:
    stages = [
        cls_pb.StageErrors(class_indices=[int(c) for c in errors], errors=list(errors.values()))
        for errors in record["stage_errors"]
    ]
    label = record["pred"]
    return cls_pb.DiffusionImageResult(
        label=label,
        class_name=class_names[label],
        prompt=record["prompt"],
        stages=stages,
        unet_passes=record["unet_passes"],
    )


def _elimination_order(result: cls_pb.DiffusionImageResult) -> list[int]:
    """Classes ranked as the Diffusion Classifier ranks them: deeper stages first, lower error first within one."""
    order: list[int] = []
    for stage in reversed(result.stages):
        for _, c in sorted(zip(stage.errors, stage.class_indices, strict=True)):
            if c not in order:
                order.append(c)
    return order


# --- Classification/EvaluateZeroShot -------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluateZeroShotPlan:
    job: JobPlan
    dataset: ImageFolder
    class_names: tuple[str, ...]
    method: ZeroShotMethod
    batch_size: int
    shard: tuple[int, int]
    results_path: Path | None


def plan_evaluate_zero_shot(
    request: cls_pb.EvaluateZeroShotRequest, runtime: ServiceRuntime, methods: MethodFactory
) -> EvaluateZeroShotPlan:
    experiment = tracking.experiment_name(request.experiment, ZEROSHOT_EXPERIMENT)
    roots = runtime.data_roots
    root = resolve_uri(request.data_uri, roots)
    if min(request.limit, request.batch_size, request.shard_start, request.shard_stop) < 0:
        raise InvalidArgument("limit, batch_size and the shard bounds must be >= 0")
    dataset = ImageFolder.open(root, request.limit, request.class_names, request.folder_to_class)
    start, stop = request.shard_start, request.shard_stop or len(dataset)
    if not start < stop <= len(dataset):
        raise InvalidArgument(f"shard [{start}, {stop}) is not a range of the {len(dataset)} samples")
    results_path = (
        output_file(request.results_uri, roots, "results_uri", "the JSONL file") if request.results_uri else None
    )
    class_names = validate_class_names(dataset.classes)  # label order: as given, else the sorted folders
    method = methods(request.method, class_names, request.prompts, request.diffusion)
    params: dict[str, Any] = {
        "method": method.name,
        "profile": runtime.profile.name,
        "data_uri": str(root),
        "limit": request.limit,
        "shard": f"{start}:{stop}",
        "n_images": stop - start,
        "n_classes": len(class_names),
        "class_names": ",".join(class_names),
        **_folder_params(dataset),
        **method.params,
    }
    tags = lineage_tags("zeroshot-eval", runtime.profile.name)
    job = JobPlan(ZEROSHOT_EVAL_KIND, experiment, f"{method.name}-zeroshot", params, tags, stop - start, "images")
    batch_size = request.batch_size or (8 if method.name == "diffusion" else 64)
    return EvaluateZeroShotPlan(job, dataset, class_names, method, batch_size, (start, stop), results_path)


def evaluation_result(result: FolderEvaluation, class_names: Sequence[str], run_id: str) -> cls_pb.EvaluationResult:
    return cls_pb.EvaluationResult(**_evaluation_fields(result, class_names, run_id))


# --- Downstream/TrainClassifier ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainPlan:
    job: JobPlan
    folder: ImageFolder
    config: train_core.TrainConfig
    registered_model_name: str
    device: torch.device


def train_config(request: ds_pb.TrainClassifierRequest, arch: str, seed: int) -> train_core.TrainConfig:
    """The request's settings over TrainConfig's defaults (0 or unset means the default), checked against the
    bounds TrainConfig declares."""
    if min(request.epochs, request.batch_size, request.image_size) < 0 or request.lr < 0:
        raise InvalidArgument("epochs, batch_size, lr and image_size must be >= 0 (0 means the default)")
    given: dict[str, Any] = {
        name: getattr(request, name) for name in ("epochs", "batch_size", "lr") if getattr(request, name)
    }
    given |= {name: getattr(request, name) for name in ("weight_decay", "val_fraction") if request.HasField(name)}
    seed = request.seed if request.HasField("seed") else seed
    config = train_core.TrainConfig(
        arch=arch, seed=seed, image_size=request.image_size, pretrained=request.pretrained, **given
    )
    return config.validate()


def plan_train(request: ds_pb.TrainClassifierRequest, runtime: ServiceRuntime) -> TrainPlan:
    profile = runtime.profile
    root = resolve_uri(request.data_uri, runtime.data_roots)
    # a synthetic dataset's folders must be exactly the classes it was generated for (a stray or missing folder
    # would silently change what the model learns); labels then follow the request's class order
    classes = train_core.synthesis_classes(root)
    folder = ImageFolder.open(root, class_names=classes, field="the synthesis request's classes")
    train_core.check_trainable(folder)
    arch = train_core.resolve_arch(request.arch or profile.downstream_arch)
    config = train_config(request, arch, profile.seed)
    if config.pretrained:
        train_core.pretrained_weights_file(arch)  # fail now, with one line, if the weights are not cached
    name = registry.check_model_name(request.registered_model_name or f"zsc-downstream-{arch}")
    experiment = tracking.experiment_name(request.experiment, DOWNSTREAM_EXPERIMENT)
    device = profile.torch_device()
    # image_size is logged once the data gives it (0 means the data's own resolution)
    params = {k: v for k, v in train_core.config_params(config).items() if k != "image_size"}
    params |= {
        "n_classes": len(folder.classes),
        "class_names": ",".join(folder.classes),
        "device": str(device),
        "registered_model_name": name,
    }
    tags = lineage_tags("downstream-train", profile.name, config.seed, **{"dataset.uri": folder.root})
    job = JobPlan(TRAIN_KIND, experiment, f"{arch}-train", params, tags, config.epochs, "epochs")
    return TrainPlan(job, folder, config, name, device)


def train_response(
    plan: TrainPlan,
    prepared: train_core.PreparedTraining,
    outcome: train_core.TrainOutcome,
    version: str,
    run_id: str,
) -> ds_pb.TrainClassifierResult:
    data = prepared.data
    return ds_pb.TrainClassifierResult(
        model_uri=f"models:/{plan.registered_model_name}/{version}",
        registered_model_name=plan.registered_model_name,
        model_version=version,
        mlflow_run_id=run_id,
        class_names=data.class_names,
        arch=plan.config.arch,
        image_size=data.image_size,
        best_epoch=outcome.best_epoch,
        best_val_accuracy=outcome.best_val_accuracy,
        best_val_loss=outcome.best_val_loss,
        n_train=data.n_train,
        n_val=data.n_val,
        dataset_hash=prepared.hashes.fingerprint,
        train_images_per_second=outcome.train_images_per_second,
        seconds=outcome.seconds,
    )


# --- Downstream/Evaluate and Downstream/Predict --------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluatePlan:
    job: JobPlan
    model: registry.ResolvedModel
    loaded: Any  # downstream_servicer.LoadedModel
    folder: ImageFolder
    batch_size: int


def plan_evaluate(
    request: ds_pb.EvaluateModelRequest, runtime: ServiceRuntime, load: Callable[[registry.ResolvedModel], Any]
) -> EvaluatePlan:
    if request.limit < 0 or request.batch_size < 0:
        raise InvalidArgument("limit and batch_size must be >= 0")
    model = registry.resolve(request.model_uri)
    root = resolve_uri(request.data_uri, runtime.data_roots)
    loaded = load(model)
    names = loaded.class_names
    # labels in the model's order; each of its classes read from the folder of that name (or the one mapped to it)
    folder = ImageFolder.open(
        root, request.limit, names, request.folder_to_class, field=f"the model's {len(names)} classes"
    )
    experiment = tracking.experiment_name(request.experiment, DOWNSTREAM_EXPERIMENT)
    params = {
        "model_uri": model.uri,
        "registered_model_name": model.name,
        "model_version": model.version,
        "data_uri": str(folder.root),
        "limit": request.limit,
        "n_images": len(folder),
        "n_classes": len(folder.classes),
        **_folder_params(folder),
    }
    label = f"{model.name}-v{model.version}" if model.version else model.uri
    tags = lineage_tags("downstream-eval", runtime.profile.name, model_uri=model.uri)
    job = JobPlan(EVALUATE_KIND, experiment, f"{label}-eval", params, tags, len(folder), "images")
    return EvaluatePlan(job, model, loaded, folder, request.batch_size or 64)


def model_evaluation(plan: EvaluatePlan, result: FolderEvaluation, run_id: str) -> ds_pb.ModelEvaluation:
    model = plan.model
    return ds_pb.ModelEvaluation(
        model_uri=model.uri,
        registered_model_name=model.name,
        model_version=model.version,
        **_evaluation_fields(result, tuple(plan.loaded.class_names), run_id),
    )


@dataclass(frozen=True)
class PredictPlan:
    model: registry.ResolvedModel
    images: tuple[Image.Image, ...]
    k: int  # before capping at the model's class count, which only the loaded model knows


def plan_predict(request: ds_pb.PredictRequest, decode: ImageDecoder) -> PredictPlan:
    _check_image_count(request.images, MAX_INLINE_IMAGES)
    k = _top_k(request.top_k)
    model = registry.resolve(request.model_uri)
    return PredictPlan(model, _decode_all(request.images, decode), k)


def predict_response(plan: PredictPlan, probs: torch.Tensor, names: list[str]) -> ds_pb.PredictResponse:
    top = probs.topk(min(plan.k, len(names)), dim=-1)
    return ds_pb.PredictResponse(
        predictions=[
            _ranked(ds_pb.RankedLabels, idx.tolist(), names, p.tolist())
            for p, idx in zip(top.values, top.indices, strict=True)
        ],
        probs=codec.encode(probs.float()),
        class_names=names,
        registered_model_name=plan.model.name,
        model_version=plan.model.version,
    )


# --- Features/ExtractFeatures --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractPlan:
    job: JobPlan
    dataset: ImageFolder
    class_names: tuple[str, ...]
    template: str
    batch_size: int
    image_size: int
    cache_dir: Path | None
    out: Path
    alignment: Alignment | None
    metadata: dict[str, str]  # written into the feature set (the run id joins in the job)


def plan_extract_features(
    request: feat_pb.ExtractFeaturesRequest, runtime: ServiceRuntime, check_models: Callable[[int], None]
) -> ExtractPlan:
    experiment = tracking.experiment_name(request.experiment, FEATURES_EXPERIMENT)
    runtime.require_ready()
    roots = runtime.data_roots
    if min(request.limit, request.batch_size, request.image_size) < 0:
        raise InvalidArgument("limit, batch_size and image_size must be >= 0")
    if request.batch_size > MAX_FEATURES_BATCH:
        raise InvalidArgument(f"batch_size {request.batch_size} is over the limit of {MAX_FEATURES_BATCH}")
    if request.image_size and not MIN_IMAGE_SIZE <= request.image_size <= MAX_IMAGE_SIZE:
        raise InvalidArgument(
            f"image_size must be 0 or lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {request.image_size}"
        )
    root = resolve_uri(request.data_uri, roots)
    out = output_file(request.output_uri, roots)
    cache_dir = _cache_dir(request, roots)
    template = request.prompt_template or DEFAULT_TEMPLATE
    if template.count("{}") != 1 or len(template) > 1000:
        raise InvalidArgument(f"prompt_template {template[:80]!r} must contain exactly one '{{}}'")
    check_models(request.image_size)
    dataset = ImageFolder.open(root, request.limit, request.class_names, request.folder_to_class)
    names = validate_class_names(dataset.classes)  # label order: as given, else the sorted folders
    alignment = read_alignment(request.alignment_uri, roots)[1] if request.alignment_uri else None
    if alignment is not None and (missing := [n for n in names if n not in alignment.class_names]):
        raise InvalidArgument(
            f"alignment_uri has no aligned text feature of class {missing[0]!r}; align with every class named"
        )
    profile = runtime.profile.name
    batch_size = request.batch_size or DEFAULT_FEATURES_BATCH
    params: dict[str, Any] = {
        "profile": profile,
        "data_uri": str(root),
        "output_uri": str(out),
        "limit": request.limit,
        "n_images": len(dataset),
        "n_classes": len(names),
        "batch_size": batch_size,
        "image_size": request.image_size,
        "prompt_template": template,
        "cache_dir": str(cache_dir) if cache_dir else "",
        "class_names": ",".join(names),
        "alignment_uri": request.alignment_uri,
        **_folder_params(dataset),
    }
    tags = lineage_tags("extract-features", profile) | ({ALIGNMENT_ID_KEY: alignment.id} if alignment else {})
    job = JobPlan(FEATURES_KIND, experiment, "extract-features", params, tags, len(dataset), "images")
    metadata = {"profile": profile, "data_uri": str(root)}
    return ExtractPlan(
        job, dataset, names, template, batch_size, request.image_size, cache_dir, out, alignment, metadata
    )


def _cache_dir(request: feat_pb.ExtractFeaturesRequest, roots: list[Path]) -> Path | None:
    """The feature cache to use: none when disabled, else the request's (inside the roots) or the default one."""
    if request.disable_cache:
        return None
    cache_dir = resolve_uri(request.cache_uri, roots, must_exist=False) if request.cache_uri else None
    cache_dir = cache_dir or default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InvalidArgument(f"cache_uri {request.cache_uri!r} is not a directory")
    return cache_dir


def extract_response(
    plan: ExtractPlan, extractors: Extractors, result: ExtractionResult, run_id: str
) -> feat_pb.ExtractFeaturesResult:
    return feat_pb.ExtractFeaturesResult(
        features_uri=str(plan.out),
        n_images=len(result.features),
        class_names=plan.class_names,
        dim=extractors.dim,
        text_dim=extractors.text_dim,
        image_encoder=extractors.image_ref,
        text_encoder=extractors.text_ref,
        aligned=extractors.aligned,
        cache_hits=result.cache_hits,
        computed=result.computed,
        dataset_sha256=result.dataset_sha256,
        seconds=result.seconds,
        mlflow_run_id=run_id,
        alignment_id=plan.alignment.id if plan.alignment is not None else "",
    )
