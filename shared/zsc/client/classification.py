"""Client of the classification services: Classification (zero-shot), Features, Downstream.

A zero-shot evaluation over several replicas is cut into ``fanout.SHARDS_PER_REPLICA`` contiguous index ranges per
replica on the batch grid, run as independent shard operations by ``zsc.client.fanout`` (a lost replica's shards go
to the others), and merged: confusion matrices add up, so the result is exactly one replica's.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.classification.v1 import downstream_pb2 as ds_pb
from zsc.classification.v1 import downstream_pb2_grpc as ds_grpc
from zsc.classification.v1 import features_pb2 as ft_pb
from zsc.classification.v1 import features_pb2_grpc as ft_grpc
from zsc.client import fanout
from zsc.client._messages import ImageInput, build, enum, from_message, images, job_result, local_uri
from zsc.client.operations import ClientError, Progress, follow
from zsc.runtime import client

PathLike = str | os.PathLike[str]
METHODS = enum(pb.ZeroShotMethod, field="method")
# The service's default evaluation batch per method (classification servicer): shards are cut on this grid, so each
# replica's batches are exactly those one server runs (batch composition can move a float in the last place).
DEFAULT_BATCH = {"clip": 64, "diffusion": 8}


# --- Classification.ZeroShot ---------------------------------------------------------------------------------------
@dataclass
class TopK:
    indices: list[int]
    labels: list[str]
    probs: list[float]


@dataclass
class StageErrors:
    class_indices: list[int]
    errors: list[float]


@dataclass
class DiffusionImageResult:
    label: int
    class_name: str
    prompt: str
    stages: list[StageErrors]
    unet_passes: int


@dataclass
class ZeroShotResult:
    """Per image: ``top_k``; CLIP also gives ``logits``/``probs`` [N, C], the diffusion classifier ``diffusion``."""

    logits: np.ndarray | None
    probs: np.ndarray | None
    top_k: list[TopK]
    diffusion: list[DiffusionImageResult]


def zero_shot(
    channel: grpc.Channel,
    image_files: Sequence[ImageInput],
    class_names: Sequence[str],
    *,
    method: str = "clip",
    templates: Sequence[str] = (),
    template_set: str = "",
    top_k: int = 5,
    diffusion: Mapping[str, Any] | None = None,
) -> ZeroShotResult:
    """Classify a few images (files or encoded bytes) among ``class_names``. ``diffusion``: DiffusionOptions
    fields (preset, stages as [{"n_samples", "to_keep"}], loss, seed, batch_size, dtype, n_trials)."""
    request = build(
        pb.ZeroShotRequest,
        method=METHODS.value(method),
        class_names=list(class_names),
        prompts={"templates": list(templates), "template_set": template_set},
        top_k=top_k,
        diffusion=diffusion,
    )
    request.images.extend(images(image_files))
    return from_message(ZeroShotResult, pb_grpc.ClassificationStub(channel).ZeroShot(request))


# --- Classification.EvaluateZeroShot -------------------------------------------------------------------------------
@dataclass
class ZeroShotEvaluation:
    """One evaluation, its shards merged: ``confusion`` [C, C] (rows true), per-class accuracy by the library's rule
    (``zsc.evaluation``: NaN for a class without images), and the shards' MLflow runs."""

    class_names: list[str]
    per_class_accuracy: list[float]
    confusion: np.ndarray
    metrics: dict[str, float]
    mlflow_run_ids: list[str]
    shards: fanout.FanOut | None = None  # how a sharded evaluation ran (None on one replica)


@dataclass
class _ShardResult:
    class_names: list[str]
    n_images: int
    confusion: np.ndarray
    mlflow_run_id: str
    seconds_per_image: float
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate_zero_shot(
    target: grpc.Channel | Sequence[client.Replica],
    data: PathLike,
    *,
    method: str = "clip",
    class_names: Sequence[str] = (),
    folder_to_class: Mapping[str, str] | None = None,
    templates: Sequence[str] = (),
    template_set: str = "",
    limit: int = 0,
    batch_size: int = 0,
    experiment: str = "",
    diffusion: Mapping[str, Any] | None = None,
    results: PathLike | None = None,
    progress: Progress | None = None,
    profile: str | None = None,
    shards_per_replica: int = fanout.SHARDS_PER_REPLICA,
    on_start: fanout.OnStart | None = None,
) -> ZeroShotEvaluation:
    """Evaluate an ImageFolder on one channel, or sharded over several replicas (``profile``, ``on_start`` and
    ``shards_per_replica`` apply there). ``results``: a JSONL log of per-image results a rerun resumes from (shard k
    of N logs to ``RESULTS.shardKofN``)."""
    request = build(
        pb.EvaluateZeroShotRequest,
        method=METHODS.value(method),
        data_uri=local_uri(data),
        class_names=list(class_names),
        folder_to_class=folder_to_class,
        prompts={"templates": list(templates), "template_set": template_set},
        limit=limit,
        batch_size=batch_size,
        experiment=experiment,
        diffusion=diffusion,
    )
    if isinstance(target, grpc.Channel):
        request.results_uri = local_uri(results)
        op = follow(target, pb_grpc.ClassificationStub(target).EvaluateZeroShot(request), progress)
        return merge_zero_shot([_shard_result(op)])
    return _evaluate_sharded(list(target), request, results, profile, shards_per_replica, on_start, progress)


def _shard_result(op: Any) -> _ShardResult:
    result = from_message(_ShardResult, client.unpack(op, pb.EvaluationResult))
    result.metrics = dict(op.metadata.metrics)
    return result


def _evaluate_sharded(
    replicas: list[client.Replica],
    request: pb.EvaluateZeroShotRequest,
    results: PathLike | None,
    profile: str | None,
    shards_per_replica: int,
    on_start: fanout.OnStart | None,
    progress: Progress | None,
) -> ZeroShotEvaluation:
    from zsc.data import ImageFolder

    try:
        n = len(ImageFolder.open(Path(request.data_uri), request.limit, request.class_names, request.folder_to_class))
    except Exception as err:
        raise ClientError(f"sharding over replicas needs the dataset visible here too: {err}") from err
    grid = request.batch_size or DEFAULT_BATCH[METHODS.name(request.method)]
    bounds = shard_bounds(n, shards_per_replica * len(replicas), grid)
    parts = []
    for k, (lo, hi) in enumerate(bounds):
        part = pb.EvaluateZeroShotRequest()
        part.CopyFrom(request)
        part.shard_start, part.shard_stop = lo, hi
        if results is not None:
            part.results_uri = f"{local_uri(results)}.shard{k}of{len(bounds)}"
        parts.append(part)
    run = fanout.run_shards(
        "classification",
        replicas,
        parts,
        lambda channel, part: pb_grpc.ClassificationStub(channel).EvaluateZeroShot(part),
        profile=profile,
        on_start=on_start,
        progress=progress,
    )
    merged = merge_zero_shot([_shard_result(op) for op in run.operations], len(replicas))
    merged.shards = run
    return merged


def shard_bounds(n: int, parts: int, grid: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous ranges covering [0, n), every cut on a multiple of ``grid``, sizes within one
    grid step of each other."""
    chunks = -(-n // grid)
    parts = max(1, min(parts, chunks))
    cuts = [min(n, round(i * chunks / parts) * grid) for i in range(parts + 1)]
    return list(itertools.pairwise(cuts))


def merge_zero_shot(shards: list[_ShardResult], replicas: int = 1) -> ZeroShotEvaluation:
    """One result from the shards of several replicas: confusion matrices add up exactly.

    ``seconds_per_image`` is the servers' own figure: evaluation time per image computed in this run (resumed images
    cost nothing), averaged over the shards by their images and divided by the ``replicas`` working at once: the
    effective time per image."""
    import torch

    from zsc.evaluation import confusion_accuracy, present_mean

    confusion = np.sum([s.confusion for s in shards], axis=0)
    accuracy = confusion_accuracy(torch.from_numpy(confusion))
    n = int(confusion.sum())
    metrics = {
        "top1": float(np.trace(confusion) / max(1, n)),
        "macro_accuracy": present_mean(accuracy),
        "n_images": n,
        "seconds_per_image": sum(s.seconds_per_image * s.n_images for s in shards) / max(1, n) / replicas,
    }
    passes = [s.metrics["unet_passes_per_image"] * s.n_images for s in shards if "unet_passes_per_image" in s.metrics]
    if passes:
        metrics["unet_passes_per_image"] = sum(passes) / n
    runs = [s.mlflow_run_id for s in shards]
    return ZeroShotEvaluation(list(shards[0].class_names), accuracy.tolist(), confusion, metrics, runs)


# --- Features.ExtractFeatures --------------------------------------------------------------------------------------
@dataclass
class ExtractedFeatures:
    features_uri: str
    n_images: int
    class_names: list[str]
    dim: int
    text_dim: int
    image_encoder: str
    text_encoder: str
    aligned: bool
    cache_hits: int
    computed: int
    dataset_sha256: str
    seconds: float
    mlflow_run_id: str
    alignment_id: str


def extract_features(
    channel: grpc.Channel,
    data: PathLike,
    out: PathLike,
    *,
    limit: int = 0,
    batch_size: int = 0,
    class_names: Sequence[str] = (),
    folder_to_class: Mapping[str, str] | None = None,
    prompt_template: str = "",
    image_size: int = 0,
    cache_dir: PathLike | None = None,
    disable_cache: bool = False,
    experiment: str = "",
    alignment: PathLike | None = None,
    progress: Progress | None = None,
) -> ExtractedFeatures:
    """Image features, labels, class names and class text features of an ImageFolder, written to ``out``."""
    request = build(
        ft_pb.ExtractFeaturesRequest,
        data_uri=local_uri(data),
        output_uri=local_uri(out),
        limit=limit,
        batch_size=batch_size,
        class_names=list(class_names),
        folder_to_class=folder_to_class,
        prompt_template=prompt_template,
        image_size=image_size,
        cache_uri=local_uri(cache_dir),
        disable_cache=disable_cache,
        experiment=experiment,
        alignment_uri=local_uri(alignment),
    )
    op = ft_grpc.FeaturesStub(channel).ExtractFeatures(request)
    return job_result(channel, op, progress, ExtractedFeatures, ft_pb.ExtractFeaturesResult)


# --- Downstream ----------------------------------------------------------------------------------------------------
@dataclass
class TrainedClassifier:
    model_uri: str
    registered_model_name: str
    model_version: str
    mlflow_run_id: str
    class_names: list[str]
    arch: str
    image_size: int
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    n_train: int
    n_val: int
    dataset_hash: str
    train_images_per_second: float
    seconds: float


def train_classifier(
    channel: grpc.Channel,
    data: PathLike,
    *,
    arch: str = "",
    epochs: int = 0,
    batch_size: int = 0,
    lr: float = 0.0,
    weight_decay: float | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    registered_model_name: str = "",
    pretrained: bool = False,
    image_size: int = 0,
    experiment: str = "",
    progress: Progress | None = None,
) -> TrainedClassifier:
    """Train a timm classifier on an ImageFolder, select it on held-out images, register it (None/0: defaults)."""
    request = build(
        ds_pb.TrainClassifierRequest,
        data_uri=local_uri(data),
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        val_fraction=val_fraction,
        seed=seed,
        registered_model_name=registered_model_name,
        pretrained=pretrained,
        image_size=image_size,
        experiment=experiment,
    )
    op = ds_grpc.DownstreamStub(channel).TrainClassifier(request)
    return job_result(channel, op, progress, TrainedClassifier, ds_pb.TrainClassifierResult)


@dataclass
class ModelEvaluation:
    model_uri: str
    registered_model_name: str
    model_version: str
    class_names: list[str]
    n_images: int
    top1: float
    macro_accuracy: float
    per_class_accuracy: list[float]
    confusion: np.ndarray
    mlflow_run_id: str
    seconds_per_image: float


def evaluate_model(
    channel: grpc.Channel,
    model_uri: str,
    data: PathLike,
    *,
    limit: int = 0,
    batch_size: int = 0,
    experiment: str = "",
    folder_to_class: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> ModelEvaluation:
    """Evaluate a registered downstream model on a real ImageFolder (tags the version with real_test.* metrics)."""
    request = build(
        ds_pb.EvaluateModelRequest,
        model_uri=model_uri,
        data_uri=local_uri(data),
        limit=limit,
        batch_size=batch_size,
        experiment=experiment,
        folder_to_class=folder_to_class,
    )
    op = ds_grpc.DownstreamStub(channel).Evaluate(request)
    return job_result(channel, op, progress, ModelEvaluation, ds_pb.ModelEvaluation)


@dataclass
class RankedLabels:
    indices: list[int]
    labels: list[str]
    probs: list[float]


@dataclass
class Prediction:
    predictions: list[RankedLabels]
    probs: np.ndarray | None
    class_names: list[str]
    registered_model_name: str
    model_version: str


def predict(channel: grpc.Channel, model_uri: str, image_files: Sequence[ImageInput], *, top_k: int = 5) -> Prediction:
    """Top-k labels of a few images (files or encoded bytes) from a registered downstream model."""
    request = ds_pb.PredictRequest(model_uri=model_uri, top_k=top_k)
    request.images.extend(images(image_files))
    return from_message(Prediction, ds_grpc.DownstreamStub(channel).Predict(request))
