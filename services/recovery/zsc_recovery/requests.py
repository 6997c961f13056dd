"""Recovery requests -> plans, results -> responses: every check and conversion of Recover and Align.

``plan_recover`` and ``plan_align`` run on the RPC thread: bad input gets INVALID_ARGUMENT (FAILED_PRECONDITION for a
profile without CLIP) before any job starts. A plan holds plain values (tensors, configs, paths) plus the JobPlan the
servicer starts; the ``*_output`` and ``*_response`` functions turn a core's result into the features file and the
response message.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zsc import codec, tracking
from zsc.common.v1 import common_pb2
from zsc.config import from_message
from zsc.data import check_class_names, output_file
from zsc.enums import ProtoEnum
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.features import Alignment, FeatureSet, content_hash, read_feature_file
from zsc.models.clip import DEFAULT_TEMPLATE, ClipBundle
from zsc.recovery.v1 import recovery_pb2 as pb
from zsc.runtime.jobs import JobPlan, lineage_tags
from zsc.runtime.server import ServiceRuntime
from zsc_recovery.core.flpt import AlignResult, FlptConfig
from zsc_recovery.core.recover import (
    RecoveryConfig,
    RecoveryResult,
    Teacher,
    VmfRecovery,
    check_text_space,
    prepare_recovery,
    teacher_from_weights,
)

RECOVER_KIND = "zsc.recovery.v1.Recovery/Recover"
ALIGN_KIND = "zsc.recovery.v1.Recovery/Align"
EXPERIMENT = "zsc-recovery"
MAX_CLASSES = 10_000  # the angular kappa and the per-step logits grow as S^2
# Largest [rows, D] float32 buffer a request may make the service hold (draws of S classes x samples per class).
MAX_BUFFER_BYTES = 4 << 30
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# The .proto comments name each UNSPECIFIED's meaning: COSINE, ANGULAR, EXACT.
METRICS = ProtoEnum(pb.TeacherMetric, default="cosine", field="teacher metric")
POLICIES = ProtoEnum(pb.KappaPolicy, default="angular", field="kappa policy")
SAMPLERS = ProtoEnum(pb.VmfSampler, default="exact", field="vMF sampler")
# RecoverRequest's optional fields that RecoveryConfig takes as they are (kappa, seed and the enums need a rule).
RECOVERY_FIELDS = ("theta", "num", "nsample", "epochs", "lr", "weight_decay", "trusted")


@dataclass(frozen=True)
class RecoverPlan:
    job: JobPlan
    names: tuple[str, ...]
    teacher: Teacher
    weight: torch.Tensor  # [S, D] float32 on the service's device
    config: RecoveryConfig
    init_from_teacher: bool
    out: Path
    device: torch.device
    # Inline text features (float32, on the CPU) with their recovery loop, built on the RPC thread; both None for a
    # names-only request, whose class names the job encodes with ``clip`` and ``template``.
    text: torch.Tensor | None = None
    recovery: VmfRecovery | None = None
    clip: ClipBundle | None = None
    template: str = ""


@dataclass(frozen=True)
class AlignPlan:
    job: JobPlan
    clip: ClipBundle
    features: torch.Tensor  # [N, D] float32 virtual base features
    labels: torch.Tensor  # [N] int64 into base
    base: tuple[str, ...]
    novel: tuple[str, ...]
    names: tuple[str, ...]  # every class, in the request's (and the output's) order
    config: FlptConfig
    out: Path
    input_hash: str


def require_clip(clip: ClipBundle | None, runtime: ServiceRuntime, why: str) -> ClipBundle:
    if clip is None:
        raise FailedPrecondition(f"profile {runtime.profile.name!r} has no CLIP model; {why}")
    return clip


def decode_float(msg: common_pb2.Tensor, rank: int, name: str) -> torch.Tensor:
    """A float32 tensor of the given rank from a request (float16 and bfloat16 are widened), NaN/Inf refused."""
    tensor = codec.decode(msg, "torch", dtypes=FLOAT_DTYPES, rank=rank, name=name)
    assert isinstance(tensor, torch.Tensor)
    return tensor.float()


# --- Recover -------------------------------------------------------------------------------------------------------
def plan_recover(request: pb.RecoverRequest, runtime: ServiceRuntime, clip: ClipBundle | None) -> RecoverPlan:
    experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
    runtime.require_ready()
    names = tuple(check_class_names(request.class_names, "class_names", MAX_CLASSES))
    device = runtime.profile.torch_device()
    metric, weight, bias, temperature = decode_teacher(request.teacher)
    rows, dim = weight.shape
    if rows != len(names):
        raise InvalidArgument(f"the teacher has S={rows} classes but {len(names)} class names were given")
    weight = weight.to(device)
    teacher = teacher_from_weights(weight, metric, temperature, None if bias is None else bias.to(device))
    config = recovery_config(request)
    check_buffers(rows, dim, config)
    out = output_file(request.output_uri, runtime.data_roots)
    from_teacher = request.init_from_teacher
    digest = hashlib.sha256(request.teacher.weight.data)
    text: torch.Tensor | None = None
    recovery: VmfRecovery | None = None
    template = ""
    if request.HasField("text_features"):
        text = decode_float(request.text_features, 2, "text_features")
        digest.update(request.text_features.data)
        text_source = "inline"
        # Built here (a teacher probe and the angular kappa), so its errors reach the caller as INVALID_ARGUMENT.
        recovery = prepare_recovery(teacher, weight, text.to(device), config, init_from_teacher=from_teacher)
    else:
        clip = require_clip(clip, runtime, "send text_features, or use a profile with CLIP to encode the class names")
        check_text_space(dim, clip.embed_dim, from_teacher, f"the CLIP model {clip.ref} encodes")
        template = check_template(request.prompt_template or DEFAULT_TEMPLATE)
        text_source = f"clip {clip.ref}: {template}"
    params = {
        "metric": metric,
        "temperature": temperature,
        "teacher_bias": bias is not None,
        "kappa_policy": config.kappa_policy,
        "theta": config.theta,
        "kappa": config.kappa,
        "num": config.num,
        "nsample": config.nsample,
        "epochs": config.epochs,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "trusted": config.trusted,
        "sampler": config.sampler,
        "preset": request.preset,
        "n_classes": rows,
        "dim": dim,
        "text_source": text_source,
        "init": "teacher" if from_teacher else "text",
        "profile": runtime.profile.name,
        "output_uri": str(out),
        "class_names": ",".join(names),
    }
    tags = lineage_tags("dfzsl-recover", runtime.profile.name, config.seed, input_sha256=digest.hexdigest())
    job = JobPlan(RECOVER_KIND, experiment, "dfzsl-recover", params, tags, total=config.epochs, unit="steps")
    return RecoverPlan(job, names, teacher, weight, config, from_teacher, out, device, text, recovery, clip, template)


def check_template(template: str) -> str:
    if template.count("{}") != 1 or len(template) > 1000:
        raise InvalidArgument(f"prompt_template {template[:80]!r} must contain exactly one '{{}}'")
    return template


def decode_teacher(msg: pb.Teacher) -> tuple[str, torch.Tensor, torch.Tensor | None, float]:
    """(metric, weight [S, D] float32, bias [S] or None, temperature), every tensor checked for NaN/Inf."""
    metric = METRICS.name(msg.metric)
    if not msg.HasField("weight"):
        raise InvalidArgument("the teacher weight is missing")
    weight = decode_float(msg.weight, 2, "teacher weight")
    bias = decode_float(msg.bias, 1, "teacher bias") if msg.HasField("bias") else None
    temperature = msg.temperature if msg.HasField("temperature") else 1.0
    return metric, weight, bias, temperature


def recovery_config(request: pb.RecoverRequest) -> RecoveryConfig:
    """RecoveryConfig from the request; unset optional fields keep the preset's values, or without a preset the
    defaults of the released configs. The config refuses bad values (ValueError: INVALID_ARGUMENT)."""
    policy = POLICIES.name(request.kappa_policy)
    kwargs: dict[str, Any] = {
        "kappa_policy": policy,
        "seed": int(request.seed),
        "sampler": SAMPLERS.name(request.sampler),
    }
    if policy == "fixed" or request.kappa != 0:
        kwargs["kappa"] = request.kappa  # the core refuses kappa <= 0 and a kappa given with the angular policy
    kwargs.update({name: getattr(request, name) for name in RECOVERY_FIELDS if request.HasField(name)})
    if request.preset:
        return RecoveryConfig.from_preset(request.preset, **kwargs)
    return RecoveryConfig(**kwargs)


def check_buffers(rows: int, dim: int, config: RecoveryConfig) -> None:
    """Refuse requests whose draws ([S x samples, D]) or logits ([S x nsample, S]) would not fit the service."""
    per_class = max(config.num, config.nsample, config.val_samples)
    per_step = max(config.nsample, config.val_samples)
    for what, nbytes in (
        (f"{rows} classes x {per_class} samples per class x D={dim} features", rows * per_class * dim * 4),
        (f"{rows} classes x {per_step} samples per class x {rows} logits", rows * per_step * rows * 4),
    ):
        if nbytes > MAX_BUFFER_BYTES:
            raise InvalidArgument(
                f"{what} needs {nbytes / 2**30:.1f} GiB, over the limit of {MAX_BUFFER_BYTES / 2**30:.0f} GiB"
            )


def recover_output(plan: RecoverPlan, result: RecoveryResult, text: torch.Tensor, run_id: str) -> FeatureSet:
    """The features file: the virtual features, the base text features and how they were made."""
    metadata = {
        "zsc.kind": "dfzsl-recover",
        "mlflow_run_id": run_id,
        "params": json.dumps(dict(plan.job.params), sort_keys=True),
        "kappa": repr(result.kappa),
        "teacher_agreement": repr(result.teacher_agreement),
        "kept_fraction": json.dumps(result.kept_fraction.tolist()),
        "profile": plan.job.params["profile"],
    }
    return FeatureSet(
        features=result.features,
        labels=result.labels,
        class_names=list(plan.names),
        text_features=F.normalize(text.float(), dim=-1).cpu(),
        metadata=metadata,
    )


def recover_response(plan: RecoverPlan, result: RecoveryResult, run_id: str) -> pb.RecoverResult:
    return pb.RecoverResult(
        features_uri=str(plan.out),
        class_names=plan.names,
        n_features=len(result.labels),
        mu=codec.encode(result.mu.float()),
        kappa=result.kappa,
        stats=pb.RecoveryStats(
            kept_fraction=result.kept_fraction.tolist(),
            teacher_agreement=result.teacher_agreement,
            final_loss=result.final_loss,
            mlflow_run_id=run_id,
            best_step=result.best_step,
            best_val_loss=result.best_val_loss,
            steps_run=result.steps_run,
        ),
    )


# --- Align ---------------------------------------------------------------------------------------------------------
def plan_align(request: pb.AlignRequest, runtime: ServiceRuntime, clip: ClipBundle | None) -> AlignPlan:
    experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
    runtime.require_ready()
    clip = require_clip(clip, runtime, "FLPT tunes the profile's CLIP text encoder")
    features, labels, base, input_hash, input_ref = virtual_features(request, runtime.data_roots)
    names = tuple(check_class_names(request.class_names, "class_names", MAX_CLASSES))
    known, base_set = set(names), set(base)
    missing = [n for n in base if n not in known]
    if missing:
        raise InvalidArgument(
            f"{len(missing)} base class(es) of the features are missing from class_names, e.g. {missing[0]!r}"
        )
    novel = tuple(n for n in names if n not in base_set)
    if features.shape[1] != clip.embed_dim:
        raise InvalidArgument(
            f"the features have D={features.shape[1]} but the CLIP model {clip.ref} encodes D={clip.embed_dim}"
        )
    config = from_message(FlptConfig, request.settings)
    out = output_file(request.output_uri, runtime.data_roots)
    params = {
        "ctx_init": config.ctx_init,
        "residual_scale": config.residual_scale,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "seed": config.seed,
        "shuffle": config.shuffle,
        "n_features": len(features),
        "n_base": len(base),
        "n_novel": len(novel),
        "dim": clip.embed_dim,
        "clip": clip.ref,
        "profile": runtime.profile.name,
        "input": input_ref,
        "output_uri": str(out),
        "class_names": ",".join(names),
    }
    tags = lineage_tags("dfzsl-align", runtime.profile.name, config.seed, input_sha256=input_hash)
    total = math.ceil(len(features) / config.batch_size) * config.epochs
    job = JobPlan(ALIGN_KIND, experiment, "dfzsl-align", params, tags, total=total, unit="steps")
    return AlignPlan(job, clip, features, labels, base, novel, names, config, out, input_hash)


def virtual_features(
    request: pb.AlignRequest, roots: list[Path]
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], str, str]:
    """(features [N, D] float32, labels [N] int64, base class names, input sha256, input reference) of the
    request's features file or inline features; never empty."""
    source = request.WhichOneof("source")
    if source is None:
        raise InvalidArgument("give the virtual features as features_uri or inline features")
    if source == "features_uri":
        path, data = read_feature_file(request.features_uri, roots, "features_uri")
        found = data.features, data.labels, tuple(data.class_names), content_hash(path), str(path)
    else:
        inline = request.features
        base = tuple(check_class_names(inline.class_names, "features.class_names", MAX_CLASSES))
        features = decode_float(inline.features, 2, "features")
        labels = torch.as_tensor(codec.decode(inline.labels, "torch", dtypes=("int64", "int32"), rank=1, name="labels"))
        labels = labels.long()
        if labels.shape[0] != features.shape[0]:
            raise InvalidArgument(f"features has {features.shape[0]} rows but labels has {labels.shape[0]}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(base)):
            raise InvalidArgument(f"labels must index the {len(base)} classes in features.class_names")
        found = features, labels, base, hashlib.sha256(inline.features.data + inline.labels.data).hexdigest(), "inline"
    if len(found[0]) == 0:
        raise InvalidArgument("the virtual feature set is empty")
    return found


def align_output(plan: AlignPlan, result: AlignResult, alignment: Alignment, run_id: str) -> FeatureSet:
    """The aligned features file (classes in the request's order); it records the alignment too."""
    metadata = {
        "zsc.kind": "dfzsl-align",
        "mlflow_run_id": run_id,
        "params": json.dumps(dict(plan.job.params), sort_keys=True),
        "base_classes": json.dumps(list(plan.base)),
        "novel_classes": json.dumps(list(plan.novel)),
        "input_sha256": plan.input_hash,
        "profile": plan.job.params["profile"],
        **alignment.metadata(),
    }
    return FeatureSet(
        features=result.features,
        labels=result.labels,
        class_names=list(plan.names),
        text_features=result.text_features,
        metadata=metadata,
    )


def align_response(plan: AlignPlan, result: AlignResult, alignment: Alignment, run_id: str) -> pb.AlignResult:
    return pb.AlignResult(
        features_uri=str(plan.out),
        final_loss=result.final_loss,
        class_names=plan.names,
        n_base=len(plan.base),
        n_novel=len(plan.novel),
        n_features=len(result.labels),
        steps_run=result.steps_run,
        mlflow_run_id=run_id,
        alignment_id=alignment.id,
        residual=codec.encode(result.residual),
        residual_weight=alignment.weight,
    )
