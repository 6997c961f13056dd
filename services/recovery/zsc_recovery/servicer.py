"""Recovery service: DFZSL's vMF recovery of virtual base features (Recover) and FLPT alignment (Align).

A thin gRPC layer over the pure cores in ``core/``: each handler turns the request into a plan (``requests.py``: every
check on the RPC thread, so bad input gets INVALID_ARGUMENT before any job starts), runs the core as a tracked job
(an Operation with progress and cancel inside one MLflow run), logs what the core returns and writes a feature set
(zsc.features) inside the data roots.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import grpc
import torch

from zsc import tracking
from zsc.common.v1 import common_pb2
from zsc.data import check_class_names, output_file
from zsc.features import ALIGNMENT_ID_KEY, Alignment, read_feature_file, save_features
from zsc.models.clip import ClipBundle, create_clip, encode_class_names
from zsc.recovery.v1 import recovery_pb2 as pb
from zsc.recovery.v1 import recovery_pb2_grpc as pb_grpc
from zsc.runtime.jobs import TrackedRun, start_tracked
from zsc.runtime.server import ServiceRuntime
from zsc_recovery.core.flpt import AlignResult, align_features
from zsc_recovery.core.recover import RecoveryResult, VmfRecovery, prepare_recovery
from zsc_recovery.requests import (
    MAX_CLASSES,
    RecoverPlan,
    align_output,
    align_response,
    plan_align,
    plan_recover,
    recover_output,
    recover_response,
)

MAX_CURVE_POINTS = 1000  # per-step curves are subsampled to this many MLflow points


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


class RecoveryServicer(pb_grpc.RecoveryServicer):
    def __init__(self, service: RecoveryService) -> None:
        self.service = service

    def Recover(self, request: pb.RecoverRequest, context: grpc.ServicerContext) -> common_pb2.Operation:
        runtime = self.service.runtime
        plan = plan_recover(request, runtime, self.service.clip)

        def body(tracked: TrackedRun) -> pb.RecoverResult:
            recovery, text = _recovery(plan, tracked)
            tracked.progress(0, message="recovering", kappa=recovery.kappa)
            result = recovery.fit(
                on_step=lambda step, total, loss: tracked.progress(step, total, loss=loss),
                should_stop=tracked.should_stop,
            )
            _log_recover(tracked, plan.names, result)
            save_features(recover_output(plan, result, text, tracked.run_id), plan.out, tracked)
            return recover_response(plan, result, tracked.run_id)

        return start_tracked(runtime.operations, plan.job, body)

    def Align(self, request: pb.AlignRequest, context: grpc.ServicerContext) -> common_pb2.Operation:
        runtime = self.service.runtime
        plan = plan_align(request, runtime, self.service.clip)

        def body(tracked: TrackedRun) -> pb.AlignResult:
            result = align_features(
                plan.clip.model,
                plan.clip.tokenizer,
                plan.features,
                plan.labels,
                plan.base,
                plan.novel,
                plan.config,
                on_step=lambda step, total, loss: tracked.progress(step, total, loss=loss),
                should_stop=tracked.should_stop,
            ).in_order(plan.names)
            # The residual and its weight are part of the feature space: recorded in the file and the lineage.
            alignment = Alignment(result.residual, float(plan.config.residual_scale))
            _log_align(tracked, result, alignment)
            save_features(align_output(plan, result, alignment, tracked.run_id), plan.out, tracked)
            return align_response(plan, result, alignment, tracked.run_id)

        return start_tracked(runtime.operations, plan.job, body)

    def FitTeacher(self, request: pb.FitTeacherRequest, context: grpc.ServicerContext) -> pb.FitTeacherResult:
        """Unary: a few thousand feature rows fit in about a second, no job or MLflow run needed."""
        from zsc.io import atomic_write_bytes
        from zsc_recovery.core.teacher import fit_teacher

        roots = self.service.runtime.data_roots
        names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
        _, data = read_feature_file(request.features_uri, roots, "features_uri")
        out = output_file(request.output_uri, roots, what="the teacher file")
        c = request.c if request.HasField("c") else 1.0
        max_iter = request.max_iter if request.HasField("max_iter") else 1000
        fit = fit_teacher(data.features, data.labels, data.class_names, names, c=c, max_iter=max_iter)
        atomic_write_bytes(out, fit.to_bytes())
        return pb.FitTeacherResult(
            teacher_uri=str(out),
            class_names=fit.class_names,
            n_train=fit.n_train,
            dim=int(fit.weight.shape[1]),
            train_accuracy=fit.train_accuracy,
        )


# --- job steps, tracking and outputs -------------------------------------------------------------------------------
def _recovery(plan: RecoverPlan, tracked: TrackedRun) -> tuple[VmfRecovery, torch.Tensor]:
    """The plan's recovery loop and base text features; for a names-only request the profile's CLIP encodes the
    class names first (in the job, not on the RPC thread: 10k classes take a while)."""
    if plan.recovery is not None and plan.text is not None:
        return plan.recovery, plan.text
    assert plan.clip is not None  # a names-only plan carries the profile's CLIP
    tracked.progress(0, message=f"encoding {len(plan.names)} class names")
    text = encode_class_names(plan.clip.model, plan.clip.tokenizer, plan.names, plan.template).to(plan.device)
    recovery = prepare_recovery(plan.teacher, plan.weight, text, plan.config, init_from_teacher=plan.init_from_teacher)
    return recovery, text


def _log_recover(tracked: TrackedRun, names: Sequence[str], result: RecoveryResult) -> None:
    run = tracked.run
    kept = result.kept_fraction.tolist()
    log_curve(tracked, "loss", result.loss_curve)
    log_curve(tracked, "val_loss", result.val_losses, result.val_steps)
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


def _log_align(tracked: TrackedRun, result: AlignResult, alignment: Alignment) -> None:
    run = tracked.run
    log_curve(tracked, "loss", result.loss_curve)
    summary = {
        "final_loss": result.final_loss,
        "residual_norm": float(result.residual.norm()),
        "logit_scale": result.logit_scale,
        "steps": result.steps_run,
    }
    run.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
    write_tensor_artifact(run, {"ctx": result.ctx, "residual": result.residual}, "flpt.safetensors")
    run.set_tags({ALIGNMENT_ID_KEY: alignment.id})


def subsample(count: int, limit: int = MAX_CURVE_POINTS) -> list[int]:
    """At most ``limit`` evenly spread indices of range(count), always keeping the first and the last."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def log_curve(tracked: TrackedRun, key: str, values: Sequence[float], steps: Sequence[int] | None = None) -> None:
    """A per-step metric, subsampled to at most MAX_CURVE_POINTS points; steps default to 1, 2, ..."""
    for i in subsample(len(values)):
        value = float(values[i])
        if math.isfinite(value):
            tracked.log_metric(key, value, int(steps[i]) if steps is not None else i + 1)


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
    """Log tensors as a safetensors artifact (the recovered means, the FLPT context and residual)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
        run.log_artifact(path)


def create_service(runtime: ServiceRuntime) -> RecoveryService:
    return RecoveryService(runtime)
