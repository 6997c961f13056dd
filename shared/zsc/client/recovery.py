"""Client of the Recovery service: DFZSL vMF recovery, FLPT alignment and fitting a linear teacher."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from zsc.client._messages import build, enum, from_message, job_result, local_uri
from zsc.client.operations import Progress
from zsc.recovery.v1 import recovery_pb2 as pb
from zsc.recovery.v1 import recovery_pb2_grpc as pb_grpc

PathLike = str | os.PathLike[str]
METRICS = enum(pb.TeacherMetric, field="teacher.metric")
POLICIES = enum(pb.KappaPolicy, field="kappa_policy")
SAMPLERS = enum(pb.VmfSampler, field="sampler")


@dataclass
class RecoveryStats:
    kept_fraction: list[float]
    teacher_agreement: float
    final_loss: float
    mlflow_run_id: str
    best_step: int
    best_val_loss: float
    steps_run: int


@dataclass
class Recovery:
    features_uri: str
    class_names: list[str]
    n_features: int
    mu: np.ndarray | None
    kappa: float
    stats: RecoveryStats


def recover(
    channel: grpc.Channel,
    weight: Any,
    class_names: Sequence[str],
    out: PathLike,
    *,
    bias: Any = None,
    metric: str = "cosine",
    temperature: float | None = None,
    text_features: Any = None,
    prompt_template: str = "",
    kappa_policy: str = "angular",
    kappa: float = 0.0,
    sampler: str | None = None,
    preset: str = "",
    init_from_teacher: bool = False,
    seed: int = 0,
    experiment: str = "",
    progress: Progress | None = None,
    **settings: Any,
) -> Recovery:
    """Recover virtual base-class features from a teacher (``weight`` [S, D], optional ``bias`` [S]) into ``out``.
    ``settings``: theta, num, nsample, epochs, lr, weight_decay, trusted (None or absent: the server's defaults)."""
    request = build(
        pb.RecoverRequest,
        teacher={"weight": weight, "bias": bias, "metric": METRICS.value(metric), "temperature": temperature},
        class_names=list(class_names),
        text_features=text_features,
        prompt_template=prompt_template,
        kappa_policy=POLICIES.value(kappa_policy),
        kappa=kappa,
        sampler=SAMPLERS.value(sampler) if sampler else None,
        seed=seed,
        output_uri=local_uri(out),
        experiment=experiment,
        init_from_teacher=init_from_teacher,
        preset=preset,
        **settings,
    )
    op = pb_grpc.RecoveryStub(channel).Recover(request)
    return job_result(channel, op, progress, Recovery, pb.RecoverResult)


@dataclass
class Alignment:
    features_uri: str
    final_loss: float
    class_names: list[str]
    n_base: int
    n_novel: int
    n_features: int
    steps_run: int
    mlflow_run_id: str
    alignment_id: str
    residual: np.ndarray | None
    residual_weight: float


def align(
    channel: grpc.Channel,
    features: PathLike,
    class_names: Sequence[str],
    out: PathLike,
    *,
    settings: Mapping[str, Any] | None = None,
    experiment: str = "",
    progress: Progress | None = None,
) -> Alignment:
    """FLPT: prompt-tune CLIP on a virtual features file; writes aligned features and all classes' text features.
    ``settings``: FlptSettings fields (epochs, batch_size, lr, weight_decay, residual_scale, ctx_init, seed,
    shuffle)."""
    request = build(
        pb.AlignRequest,
        features_uri=local_uri(features),
        class_names=list(class_names),
        output_uri=local_uri(out),
        settings=settings,
        experiment=experiment,
    )
    op = pb_grpc.RecoveryStub(channel).Align(request)
    return job_result(channel, op, progress, Alignment, pb.AlignResult)


@dataclass
class FittedTeacher:
    teacher_uri: str
    class_names: list[str]
    n_train: int
    dim: int
    train_accuracy: float


def fit_teacher(
    channel: grpc.Channel,
    features: PathLike,
    class_names: Sequence[str],
    out: PathLike,
    *,
    c: float | None = None,
    max_iter: int | None = None,
) -> FittedTeacher:
    """Fit a linear teacher (multinomial logistic regression) on a features file's samples of ``class_names``."""
    request = build(
        pb.FitTeacherRequest,
        features_uri=local_uri(features),
        class_names=list(class_names),
        c=c,
        max_iter=max_iter,
        output_uri=local_uri(out),
    )
    return from_message(FittedTeacher, pb_grpc.RecoveryStub(channel).FitTeacher(request))
