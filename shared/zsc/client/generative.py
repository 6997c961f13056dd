"""Client of the Generative service: feature generators, synthesized features, GZSL classifiers and SHIP's
fine-tuning. Settings groups are mappings of the proto settings' field names; an absent or None entry keeps the
server's default."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from zsc import codec
from zsc.client._messages import build, enum, job_result, local_uri
from zsc.client.operations import ClientError, Progress
from zsc.generative.v1 import generative_pb2 as pb
from zsc.generative.v1 import generative_pb2_grpc as pb_grpc

PathLike = str | os.PathLike[str]
Settings = Mapping[str, Any] | None
KINDS = enum(pb.GeneratorKind, field="kind")
METHODS = enum(pb.FineTuneMethod, field="method")
CALIBRATIONS = enum(pb.CalibrationMethod, field="calibration.method", strip="CALIBRATION_")


@dataclass
class ModelVersion:
    name: str
    version: str
    run_id: str
    model_uri: str
    artifact_uri: str


@dataclass
class TrainedGenerator:
    model: ModelVersion
    kind: str
    feature_dim: int
    text_dim: int
    class_names: list[str]
    trained_classes: list[str]
    epochs_run: int
    best_epoch: int
    final_metrics: dict[str, float]
    features_sha256: str


def train_generator(
    channel: grpc.Channel,
    features: PathLike,
    kind: str,
    *,
    text_features: Any = None,
    settings: Settings = None,
    selection: Settings = None,
    method_settings: Settings = None,
    seed: int = 0,
    registered_model_name: str = "",
    experiment: str = "",
    progress: Progress | None = None,
) -> TrainedGenerator:
    """Train a feature generator of ``kind`` (tfvaegan, clswgan, ship_vae) on a base features file and register it.
    ``method_settings``: the kind's own settings (ClswganSettings, TfvaeganSettings or ShipVaeSettings fields)."""
    request = build(
        pb.TrainGeneratorRequest,
        features_uri=local_uri(features),
        kind=KINDS.value(kind),
        text_features=text_features,
        settings=settings,
        selection=selection,
        seed=seed,
        registered_model_name=registered_model_name,
        experiment=experiment,
        **{kind: method_settings},  # the oneof member named as the kind
    )
    op = pb_grpc.GenerativeStub(channel).TrainGenerator(request)
    return job_result(channel, op, progress, TrainedGenerator, pb.TrainGeneratorResult)


@dataclass
class GeneratedFeatures:
    features_uri: str
    class_names: list[str]
    n_features: int
    feature_dim: int
    generator: ModelVersion
    features_sha256: str


def _generate_request(
    generator: str, class_names: Sequence[str], per_class: int, seed: int, text_features: Any, out: PathLike | None
) -> pb.GenerateFeaturesRequest:
    return build(
        pb.GenerateFeaturesRequest,
        generator=generator,
        class_names=list(class_names),
        text_features=text_features,
        per_class=per_class,
        seed=seed,
        output_uri=local_uri(out),
    )


def generate_features(
    channel: grpc.Channel,
    generator: str,
    class_names: Sequence[str],
    per_class: int,
    out: PathLike,
    *,
    text_features: Any = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> GeneratedFeatures:
    """Synthesize ``per_class`` features of each class with a registered generator into ``out``; ``text_features``
    [K, D_t] for classes the generator does not know."""
    request = _generate_request(generator, class_names, per_class, seed, text_features, out)
    op = pb_grpc.GenerativeStub(channel).GenerateFeatures(request)
    return job_result(channel, op, progress, GeneratedFeatures, pb.GenerateFeaturesResult)


def stream_features(
    channel: grpc.Channel,
    generator: str,
    class_names: Sequence[str],
    per_class: int,
    *,
    text_features: Any = None,
    seed: int = 0,
) -> tuple[list[str], np.ndarray]:
    """The synthesized features sent back instead of written: (class names, features [K * per_class, D], class by
    class)."""
    request = _generate_request(generator, class_names, per_class, seed, text_features, None)
    chunks = pb_grpc.GenerativeStub(channel).StreamFeatures(request)
    first = next(chunks, None)
    if first is None:
        raise ClientError("StreamFeatures sent nothing")
    features = codec.decode_chunks(itertools.chain([first.features], (c.features for c in chunks)))
    return list(first.class_names), np.asarray(features)


@dataclass
class CalibrationResult:
    method: str
    gamma: float
    harmonic: float
    harmonic_uncalibrated: float
    pseudo_unseen: list[str]
    generator: ModelVersion | None


@dataclass
class TrainedGZSL:
    model: ModelVersion
    class_names: list[str]
    seen_indices: list[int]
    novel_indices: list[int]
    n_base: int
    n_novel: int
    feature_dim: int
    final_loss: float
    calibration: CalibrationResult | None


def train_gzsl(
    channel: grpc.Channel,
    base: PathLike,
    *,
    novel: PathLike | None = None,
    class_names: Sequence[str] = (),
    text_features: Any = None,
    settings: Settings = None,
    calibration: str = "none",
    calibration_settings: Settings = None,
    seed: int = 0,
    registered_model_name: str = "",
    experiment: str = "",
    progress: Progress | None = None,
) -> TrainedGZSL:
    """Train the GZSL classifier on base + synthesized novel features and register it; ``calibration`` none or
    holdout (``calibration_settings``: holdout_fraction, val_fraction, n_per_class, generator)."""
    request = build(
        pb.TrainGZSLRequest,
        base_features_uri=local_uri(base),
        novel_features_uri=local_uri(novel),
        class_names=list(class_names),
        text_features=text_features,
        settings=settings,
        seed=seed,
        registered_model_name=registered_model_name,
        experiment=experiment,
        calibration={"method": CALIBRATIONS.value(calibration), **(calibration_settings or {})},
    )
    op = pb_grpc.GenerativeStub(channel).TrainGZSL(request)
    return job_result(channel, op, progress, TrainedGZSL, pb.TrainGZSLResult)


@dataclass
class GZSLMetrics:
    seen: float
    unseen: float
    harmonic: float


@dataclass
class BaseNewMetrics:
    base: float
    new: float
    harmonic: float
    base_per_class: float
    new_per_class: float


@dataclass
class GZSLEvaluation:
    """S/U/H and B/N/HM; ``per_class_accuracy`` is NaN for a class without test samples (the library's rule)."""

    gzsl: GZSLMetrics
    base_to_new: BaseNewMetrics
    class_names: list[str]
    per_class_accuracy: list[float]
    support: list[int]
    seen_indices: list[int]
    unseen_indices: list[int]
    n_samples: int
    classifier: ModelVersion
    mlflow_run_id: str


def evaluate_gzsl(
    channel: grpc.Channel,
    classifier: str,
    test: PathLike,
    *,
    unseen_classes: Sequence[str] = (),
    calibration_gamma: float | None = None,
    alignment: PathLike | None = None,
    experiment: str = "",
    progress: Progress | None = None,
) -> GZSLEvaluation:
    """GZSL S/U/H and base-to-new B/N/HM of a registered classifier on labelled test features."""
    request = build(
        pb.EvaluateGZSLRequest,
        classifier=classifier,
        test_features_uri=local_uri(test),
        unseen_classes=list(unseen_classes),
        calibration_gamma=calibration_gamma,
        experiment=experiment,
        alignment_uri=local_uri(alignment),
    )
    op = pb_grpc.GenerativeStub(channel).EvaluateGZSL(request)
    return job_result(channel, op, progress, GZSLEvaluation, pb.EvaluateGZSLResult)


@dataclass
class FineTuned:
    model: ModelVersion
    method: str
    class_names: list[str]
    base_indices: list[int]
    new_indices: list[int]
    n_fit: int
    n_val: int
    n_synthetic: int
    views: int
    epochs_run: int
    best_epoch: int
    val_accuracy: float
    final_metrics: dict[str, float]
    feature_dim: int


def fine_tune(
    channel: grpc.Channel,
    base: PathLike,
    method: str,
    *,
    novel: PathLike | None = None,
    class_names: Sequence[str] = (),
    settings: Settings = None,
    seed: int = 0,
    registered_model_name: str = "",
    experiment: str = "",
    progress: Progress | None = None,
) -> FineTuned:
    """SHIP step 3: fine-tune CLIP (coop, clip_adapter, tip_adapter_f) on base features plus synthesized ones."""
    request = build(
        pb.FineTuneRequest,
        base_features_uri=local_uri(base),
        novel_features_uri=local_uri(novel),
        class_names=list(class_names),
        method=METHODS.value(method),
        settings=settings,
        seed=seed,
        registered_model_name=registered_model_name,
        experiment=experiment,
    )
    op = pb_grpc.GenerativeStub(channel).FineTune(request)
    return job_result(channel, op, progress, FineTuned, pb.FineTuneResult)
