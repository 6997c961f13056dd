"""Recovery service: DFZSL's vMF recovery of virtual base features (Recover) and FLPT alignment (Align).

A thin gRPC layer over the pure cores in ``core/``: validate and convert the request on the RPC thread (bad input
gets INVALID_ARGUMENT before any job starts), run the core as an Operation with progress and cancel, log the run to
MLflow, and write a feature set (zsc.features) inside the data roots.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import grpc
import torch
import torch.nn.functional as F

from zsc import codec, tracking
from zsc.data import check_class_names, output_file, resolve_uri
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument, first_line
from zsc.features import ALIGNMENT_ID_KEY, Alignment, FeatureSet, content_hash
from zsc.models.clip import ClipBundle, create_clip
from zsc.recovery.v1 import recovery_pb2 as pb
from zsc.recovery.v1 import recovery_pb2_grpc as pb_grpc
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc_recovery.core.flpt import FlptConfig, align_features
from zsc_recovery.core.recover import (
    RecoveryConfig,
    Teacher,
    VmfRecovery,
    teacher_from_weights,
)

RECOVER_KIND = "zsc.recovery.v1.Recovery/Recover"
ALIGN_KIND = "zsc.recovery.v1.Recovery/Align"
EXPERIMENT = "zsc-recovery"
DEFAULT_TEMPLATE = "a photo of a {}."
MAX_CLASSES = 10_000  # the angular kappa and the per-step logits grow as S^2
MAX_EPOCHS = 10_000_000
# Largest [rows, D] float32 buffer a request may make the service hold (draws of S classes x samples per class).
MAX_BUFFER_BYTES = 4 << 30
MAX_CURVE_POINTS = 1000  # per-step curves are subsampled to this many MLflow points
ENCODE_CHUNK = 256  # class prompts per text-encoder call
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
METRICS = {pb.TEACHER_METRIC_UNSPECIFIED: "cosine", pb.COSINE: "cosine", pb.LINEAR: "linear"}
POLICIES = {
    pb.KAPPA_POLICY_UNSPECIFIED: "angular",
    pb.ANGULAR: "angular",
    pb.FIXED: "fixed",
    pb.MATCHED: "matched",
}
SAMPLERS = {pb.VMF_SAMPLER_UNSPECIFIED: "exact", pb.EXACT: "exact", pb.AUTHORS: "authors"}


class RecoveryService:
    grpc_services: ClassVar[list[str]] = ["zsc.recovery.v1.Recovery"]

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.clip: ClipBundle | None = None

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_RecoveryServicer_to_server(RecoveryServicer(self), server)

    def load(self) -> None:
        """Load the profile's CLIP (needed for names-only Recover and for Align); recovery itself needs no model."""
        profile = self.runtime.profile
        if profile.clip:
            self.clip = create_clip(profile.clip, profile.torch_device(), profile.torch_dtype(), seed=profile.seed)

    @property
    def device(self) -> torch.device:
        return self.runtime.profile.torch_device()

    def clip_or_fail(self, why: str) -> ClipBundle:
        if self.clip is None:
            raise FailedPrecondition(f"profile {self.runtime.profile.name!r} has no CLIP model; {why}")
        return self.clip

    @torch.no_grad()
    def encode_class_names(self, names: Sequence[str], template: str) -> torch.Tensor:
        """L2-normalized float32 [C, D] CLIP text features of template.format(name), on the service's device."""
        clip = self.clip_or_fail("it is needed to encode class names")
        chunks = []
        for i in range(0, len(names), ENCODE_CHUNK):
            tokens = clip.tokenizer([template.format(n) for n in names[i : i + ENCODE_CHUNK]]).to(clip.device)
            chunks.append(clip.model.encode_text(tokens).float())
        return F.normalize(torch.cat(chunks), dim=-1).to(self.device)


class RecoveryServicer(pb_grpc.RecoveryServicer):
    def __init__(self, service: RecoveryService) -> None:
        self.service = service

    # --- Recover ---------------------------------------------------------------------------------------------------
    def Recover(self, request: pb.RecoverRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        svc = self.service
        svc.runtime.require_ready()
        names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
        device = svc.device
        metric, weight, bias, temperature = decode_teacher(request.teacher)
        rows, dim = weight.shape
        if rows != len(names):
            raise InvalidArgument(f"the teacher has S={rows} classes but {len(names)} class names were given")
        teacher = teacher_from_weights(
            weight.to(device), metric, temperature, None if bias is None else bias.to(device)
        )
        config = recovery_config(request)
        check_buffers(rows, dim, config)
        out = output_file(request.output_uri, svc.runtime.data_roots)

        digest = hashlib.sha256(request.teacher.weight.data)
        recovery: VmfRecovery | None = None
        text: torch.Tensor | None = None
        template = ""
        if request.HasField("text_features"):
            text = codec.decode(
                request.text_features, "torch", dtypes=FLOAT_DTYPES, rank=2, name="text_features"
            ).float()
            from_teacher = request.init_from_teacher
            if text.shape[1] != dim and not from_teacher:  # another space: recovering there must be asked for
                raise InvalidArgument(
                    f"the teacher has D={dim} but the text features have D={text.shape[1]}; "
                    "set init_from_teacher to recover in the teacher's space"
                )
            if text.shape[0] != rows:
                raise InvalidArgument(f"the text features have {text.shape[0]} rows for {rows} base classes")
            digest.update(request.text_features.data)
            text_source = "inline"
            # Cheap (a teacher probe and the angular kappa), so its errors reach the caller as INVALID_ARGUMENT.
            recovery = new_recovery(teacher, weight.to(device), text.to(device), config, from_teacher)
        else:
            clip = svc.clip_or_fail("send text_features, or use a profile with CLIP to encode the class names")
            from_teacher = request.init_from_teacher
            if clip.embed_dim != dim and not from_teacher:
                raise InvalidArgument(
                    f"the teacher has D={dim} but the CLIP model {clip.ref} encodes D={clip.embed_dim}; "
                    "set init_from_teacher to recover in the teacher's space"
                )
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
            "profile": svc.runtime.profile.name,
            "output_uri": str(out),
            "class_names": ",".join(names),
        }
        tags = {
            "zsc.profile": svc.runtime.profile.name,
            "zsc.kind": "dfzsl-recover",
            "zsc.seed": str(config.seed),
            "zsc.input_sha256": digest.hexdigest(),
        }

        def job(ctx: JobContext) -> pb.RecoverResult:
            with tracking.run(experiment, "dfzsl-recover", tags) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)
                rec, base_text = recovery, text
                if rec is None:
                    ctx.progress(0, message=f"encoding {rows} class names")
                    base_text = svc.encode_class_names(names, template)
                    rec = new_recovery(teacher, weight.to(device), base_text, config, from_teacher)
                ctx.progress(0, message="recovering", kappa=rec.kappa)
                try:
                    result = rec.fit(
                        on_step=lambda step, total, loss: ctx.progress(step, total, loss=loss),
                        should_stop=ctx.should_stop,
                    )
                except Cancelled as err:
                    raise Cancelled(str(err)) from err
                kept = result.kept_fraction.tolist()
                log_curve(run, "loss", result.loss_curve)
                log_curve(run, "val_loss", result.val_losses, result.val_steps)
                summary = {
                    "kappa": result.kappa,
                    "teacher_agreement": result.teacher_agreement,
                    "final_loss": result.final_loss,
                    "best_step": result.best_step,
                    "best_val_loss": result.best_val_loss,
                    "n_features": len(result.labels),
                    "kept_fraction_mean": sum(kept) / len(kept),
                    "kept_fraction_min": min(kept),
                }
                run.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
                run.log_metrics(per_class_metrics("kept_fraction", names, kept))
                run.log_table({"class": list(names), "kept_fraction": kept}, "kept_fraction.json")
                write_tensor_artifact(run, {"mu": result.mu.float()}, "mu.safetensors")
                metadata = {
                    "zsc.kind": "dfzsl-recover",
                    "mlflow_run_id": run.id,
                    "params": json.dumps(params, sort_keys=True),
                    "kappa": repr(result.kappa),
                    "teacher_agreement": repr(result.teacher_agreement),
                    "kept_fraction": json.dumps(kept),
                    "profile": svc.runtime.profile.name,
                }
                features = FeatureSet(
                    features=result.features,
                    labels=result.labels,
                    class_names=list(names),
                    text_features=F.normalize(base_text.float(), dim=-1).cpu(),
                    metadata=metadata,
                )
                save_features(features, out, ctx)
                return pb.RecoverResult(
                    features_uri=str(out),
                    class_names=names,
                    n_features=len(result.labels),
                    mu=codec.encode(result.mu.float()),
                    kappa=result.kappa,
                    stats=pb.RecoveryStats(
                        kept_fraction=kept,
                        teacher_agreement=result.teacher_agreement,
                        final_loss=result.final_loss,
                        mlflow_run_id=run.id,
                        best_step=result.best_step,
                        best_val_loss=result.best_val_loss,
                        steps_run=result.steps_run,
                    ),
                )

        return svc.runtime.operations.start(RECOVER_KIND, job, total=config.epochs, unit="steps")

    # --- Align -----------------------------------------------------------------------------------------------------
    def Align(self, request: pb.AlignRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        svc = self.service
        svc.runtime.require_ready()
        clip = svc.clip_or_fail("FLPT tunes the profile's CLIP text encoder")
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument("give the virtual features as features_uri or inline features")
        if source == "features_uri":
            path = resolve_uri(request.features_uri, svc.runtime.data_roots)
            if not path.is_file():
                raise InvalidArgument(f"features_uri {request.features_uri!r} is not a file")
            try:
                data = FeatureSet.load(path)
            except (ValueError, OSError) as err:
                raise InvalidArgument(f"cannot read features file {path.name}: {first_line(err)}") from err
            except Exception as err:  # safetensors raises its own error type on a corrupt header
                raise InvalidArgument(f"cannot read features file {path.name}: {type(err).__name__}") from err
            features, labels, base = data.features, data.labels, tuple(data.class_names)
            input_hash, input_ref = content_hash(path), str(path)
        else:
            inline = request.features
            base = check_class_names(inline.class_names, "features.class_names", MAX_CLASSES)
            features = codec.decode(inline.features, "torch", dtypes=FLOAT_DTYPES, rank=2, name="features").float()
            labels = codec.decode(inline.labels, "torch", dtypes=("int64", "int32"), rank=1, name="labels").long()
            if labels.shape[0] != features.shape[0]:
                raise InvalidArgument(f"features has {features.shape[0]} rows but labels has {labels.shape[0]}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(base)):
                raise InvalidArgument(f"labels must index the {len(base)} classes in features.class_names")
            input_hash = hashlib.sha256(inline.features.data + inline.labels.data).hexdigest()
            input_ref = "inline"
        if len(features) == 0:
            raise InvalidArgument("the virtual feature set is empty")
        names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
        known = set(names)
        missing = [n for n in base if n not in known]
        if missing:
            raise InvalidArgument(
                f"{len(missing)} base class(es) of the features are missing from class_names, e.g. {missing[0]!r}"
            )
        base_set = set(base)
        novel = [n for n in names if n not in base_set]
        if features.shape[1] != clip.embed_dim:
            raise InvalidArgument(
                f"the features have D={features.shape[1]} but the CLIP model {clip.ref} encodes D={clip.embed_dim}"
            )
        config = flpt_config(request.settings)
        out = output_file(request.output_uri, svc.runtime.data_roots)
        total = math.ceil(len(features) / config.batch_size) * config.epochs
        position = {n: i for i, n in enumerate(names)}
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
            "profile": svc.runtime.profile.name,
            "input": input_ref,
            "output_uri": str(out),
            "class_names": ",".join(names),
        }
        tags = {
            "zsc.profile": svc.runtime.profile.name,
            "zsc.kind": "dfzsl-align",
            "zsc.seed": str(config.seed),
            "zsc.input_sha256": input_hash,
        }

        def job(ctx: JobContext) -> pb.AlignResult:
            with tracking.run(experiment, "dfzsl-align", tags) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)
                try:
                    result = align_features(
                        clip.model,
                        clip.tokenizer,
                        features,
                        labels,
                        base,
                        novel,
                        config,
                        on_step=lambda step, n, loss: ctx.progress(step, n, loss=loss),
                        should_stop=ctx.should_stop,
                    )
                except Cancelled as err:
                    raise Cancelled(str(err)) from err
                log_curve(run, "loss", result.loss_curve)
                summary = {
                    "final_loss": result.final_loss,
                    "residual_norm": float(result.residual.norm()),
                    "logit_scale": result.logit_scale,
                    "steps": result.steps_run,
                }
                run.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
                write_tensor_artifact(run, {"ctx": result.ctx, "residual": result.residual}, "flpt.safetensors")
                # The residual and its weight are part of the feature space: recorded in the file and the lineage.
                alignment = Alignment(result.residual, float(config.residual_scale))
                run.set_tags({ALIGNMENT_ID_KEY: alignment.id})
                # The core lists base then novel classes; the file lists them in the request's order.
                order = torch.tensor([position[n] for n in result.class_names])
                text = torch.empty_like(result.text_features)
                text[order] = result.text_features
                metadata = {
                    "zsc.kind": "dfzsl-align",
                    "mlflow_run_id": run.id,
                    "params": json.dumps(params, sort_keys=True),
                    "base_classes": json.dumps(list(base)),
                    "novel_classes": json.dumps(novel),
                    "input_sha256": input_hash,
                    "profile": svc.runtime.profile.name,
                    **alignment.metadata(),
                }
                aligned = FeatureSet(
                    features=result.features,
                    labels=order[result.labels],
                    class_names=list(names),
                    text_features=text,
                    metadata=metadata,
                )
                save_features(aligned, out, ctx)
                return pb.AlignResult(
                    features_uri=str(out),
                    final_loss=result.final_loss,
                    class_names=names,
                    n_base=len(base),
                    n_novel=len(novel),
                    n_features=len(result.labels),
                    steps_run=result.steps_run,
                    mlflow_run_id=run.id,
                    alignment_id=alignment.id,
                    residual=codec.encode(result.residual),
                    residual_weight=alignment.weight,
                )

        return svc.runtime.operations.start(ALIGN_KIND, job, total=total, unit="steps")


# --- request checks ------------------------------------------------------------------------------------------------


def check_template(template: str) -> str:
    if template.count("{}") != 1 or len(template) > 1000:
        raise InvalidArgument(f"prompt_template {template[:80]!r} must contain exactly one '{{}}'")
    return template


def decode_teacher(msg: pb.Teacher) -> tuple[str, torch.Tensor, torch.Tensor | None, float]:
    """(metric, weight [S, D] float32, bias [S] or None, temperature), every tensor checked for NaN/Inf."""
    if msg.metric not in METRICS:
        raise InvalidArgument(f"unknown teacher metric {msg.metric}; expected COSINE or LINEAR")
    if not msg.HasField("weight"):
        raise InvalidArgument("the teacher weight is missing")
    weight = codec.decode(msg.weight, "torch", dtypes=FLOAT_DTYPES, rank=2, name="teacher weight").float()
    bias = None
    if msg.HasField("bias"):
        bias = codec.decode(msg.bias, "torch", dtypes=FLOAT_DTYPES, rank=1, name="teacher bias").float()
    temperature = msg.temperature if msg.HasField("temperature") else 1.0
    return METRICS[msg.metric], weight, bias, temperature


def recovery_config(request: pb.RecoverRequest) -> RecoveryConfig:
    """RecoveryConfig from the request; unset optional fields keep the preset's values, or without a preset the
    defaults of the released configs. ValueError on bad values."""
    if request.kappa_policy not in POLICIES:
        raise InvalidArgument(f"unknown kappa policy {request.kappa_policy}; expected ANGULAR, FIXED or MATCHED")
    if request.sampler not in SAMPLERS:
        raise InvalidArgument(f"unknown vMF sampler {request.sampler}; expected EXACT or AUTHORS")
    policy = POLICIES[request.kappa_policy]
    if request.seed < 0:
        raise InvalidArgument(f"seed must be >= 0, got {request.seed}")
    if request.HasField("epochs") and request.epochs > MAX_EPOCHS:
        raise InvalidArgument(f"epochs={request.epochs} is over the limit of {MAX_EPOCHS}")
    kwargs: dict[str, object] = {
        "kappa_policy": policy,
        "seed": int(request.seed),
        "sampler": SAMPLERS[request.sampler],
    }
    if policy == "fixed" or request.kappa != 0:
        kwargs["kappa"] = request.kappa  # the core refuses kappa <= 0 and a kappa given with the angular policy
    for field in ("theta", "num", "nsample", "epochs", "lr", "weight_decay", "trusted"):
        if request.HasField(field):
            kwargs[field] = getattr(request, field)
    if request.preset:
        return RecoveryConfig.from_preset(request.preset, **kwargs)
    return RecoveryConfig(**kwargs)


def new_recovery(
    teacher: Teacher, weight: torch.Tensor, text: torch.Tensor, config: RecoveryConfig, from_teacher: bool
) -> VmfRecovery:
    """The recovery loop, with mu starting at the text features or, ``from_teacher``, at the teacher's rows.

    From the teacher is DFZSL's ``prototype: weight`` option: it is the only init in the teacher's space when the
    text features live elsewhere (any D). The core reads its ``text_features`` argument only to initialize mu and
    to compute the angular kappa from the init, so the normalized teacher rows stand in for it there; the real text
    features still go into the output file.
    """
    if not from_teacher:
        return VmfRecovery(teacher, text, config)
    prototypes = F.normalize(weight.float(), dim=1)
    return VmfRecovery(teacher, prototypes, config, init=prototypes)


def flpt_config(settings: pb.FlptSettings) -> FlptConfig:
    if settings.HasField("epochs") and settings.epochs > MAX_EPOCHS:
        raise InvalidArgument(f"epochs={settings.epochs} is over the limit of {MAX_EPOCHS}")
    kwargs: dict[str, object] = {"seed": int(settings.seed)}
    if settings.ctx_init:
        kwargs["ctx_init"] = settings.ctx_init
    for field in ("epochs", "batch_size", "lr", "weight_decay", "residual_scale", "shuffle"):
        if settings.HasField(field):
            kwargs[field] = getattr(settings, field)
    return FlptConfig(**kwargs)


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


# --- outputs -------------------------------------------------------------------------------------------------------
def save_features(features: FeatureSet, path: Path, ctx: JobContext) -> None:
    """Write atomically; a job cancelled around the write leaves no file behind."""
    ctx.check_cancelled()
    path.parent.mkdir(parents=True, exist_ok=True)
    features.save(path)
    if ctx.should_stop():
        path.unlink(missing_ok=True)
        ctx.check_cancelled()


def subsample(count: int, limit: int = MAX_CURVE_POINTS) -> list[int]:
    """At most ``limit`` evenly spread indices of range(count), always keeping the first and the last."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def log_curve(run: tracking.Run, key: str, values: Sequence[float], steps: Sequence[int] | None = None) -> None:
    """A per-step metric, subsampled to at most MAX_CURVE_POINTS points; steps default to 1, 2, ..."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = []
    for i in subsample(len(values)):
        value = float(values[i])
        if math.isfinite(value):
            points.append(Metric(key, value, now, int(steps[i]) if steps is not None else i + 1))
    for i in range(0, len(points), MAX_CURVE_POINTS):
        run.client.log_batch(run.id, metrics=points[i : i + MAX_CURVE_POINTS])


def per_class_metrics(prefix: str, names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """``prefix/<class>`` metrics; names are reduced to MLflow's allowed characters and made unique."""
    out: dict[str, float] = {}
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        safe = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or f"class_{i}"
        key = f"{prefix}/{safe}"
        if key in out:
            key = f"{prefix}/{safe}_{i}"
        out[key] = float(value)
    return out


def write_tensor_artifact(run: tracking.Run, tensors: dict[str, torch.Tensor], name: str) -> None:
    """Log tensors as a safetensors artifact (used for the recovered means)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
        run.log_artifact(path)


def create_service(runtime: ServiceRuntime) -> RecoveryService:
    return RecoveryService(runtime)
