"""Classification service: zero-shot classification with CLIP and the Diffusion Classifier (downstream timm models
join with their issue). A thin gRPC layer: validate, convert, call the core, report progress."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import grpc
import torch

from zsc import codec, tracking
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.classification.v1 import downstream_pb2_grpc
from zsc.data import ImageFolder, output_file, resolve_uri
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.models.clip import create_clip
from zsc.plots import confusion_figure, per_class_figure
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc_classification.core.clip_zeroshot import ClipZeroShot
from zsc_classification.core.evaluate import FolderEvaluation, evaluate_folder
from zsc_classification.core.prompts import validate_class_names
from zsc_classification.downstream_servicer import DownstreamServicer
from zsc_classification.features_servicer import add_features_to_server
from zsc_classification.zeroshot import (
    METHOD_NAMES,
    DiffusionModelCache,
    ZeroShotMethod,
    clip_method,
    diffusion_method,
)

MAX_INLINE_IMAGES = 256
MAX_INLINE_DIFFUSION_IMAGES = 16  # each costs thousands of UNet passes: datasets go through EvaluateZeroShot


class ClassificationService:
    grpc_services: ClassVar[list[str]] = [
        "zsc.classification.v1.Classification",
        "zsc.classification.v1.Downstream",
        "zsc.classification.v1.Features",
    ]

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.clip: ClipZeroShot | None = None
        self.diffusion = DiffusionModelCache(runtime.profile)

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_ClassificationServicer_to_server(ClassificationServicer(self), server)
        downstream_pb2_grpc.add_DownstreamServicer_to_server(DownstreamServicer(self.runtime), server)
        add_features_to_server(self, server)

    def load(self) -> None:
        profile = self.runtime.profile
        if profile.clip:
            bundle = create_clip(profile.clip, profile.torch_device(), profile.torch_dtype(), seed=profile.seed)
            self.clip = ClipZeroShot(bundle)

    def method(
        self, method: int, class_names: tuple[str, ...], prompts: pb.PromptSpec, diffusion: pb.DiffusionOptions
    ) -> ZeroShotMethod:
        """The requested zero-shot method, ready for this class set (prompts encoded, schedule validated)."""
        if method not in METHOD_NAMES:
            raise InvalidArgument(f"unknown zero-shot method {method}")
        self.runtime.require_ready()
        if method == pb.DIFFUSION:
            return diffusion_method(self.diffusion.get(), class_names, diffusion, prompts)
        if self.clip is None:
            raise FailedPrecondition(
                f"profile {self.runtime.profile.name!r} has no CLIP model, so CLIP zero-shot is unavailable"
            )
        return clip_method(self.clip, class_names, prompts)


class ClassificationServicer(pb_grpc.ClassificationServicer):
    def __init__(self, service: ClassificationService) -> None:
        self.service = service

    def ZeroShot(self, request: pb.ZeroShotRequest, context: grpc.ServicerContext) -> pb.ZeroShotResponse:
        class_names = validate_class_names(list(request.class_names))
        limit = MAX_INLINE_DIFFUSION_IMAGES if request.method == pb.DIFFUSION else MAX_INLINE_IMAGES
        if not request.images:
            raise InvalidArgument("no images in the request")
        if len(request.images) > limit:
            raise InvalidArgument(
                f"{len(request.images)} inline images is over the limit of {limit}; "
                "use EvaluateZeroShot with a dataset reference"
            )
        if request.top_k < 0:
            raise InvalidArgument("top_k must be >= 0")
        method = self.service.method(request.method, class_names, request.prompts, request.diffusion)
        decode = self.service.runtime.decode_image
        images = [decode(im.data, what=f"image {i}") for i, im in enumerate(request.images)]
        # The call's deadline and cancellation reach the core: an expired call stops computing.
        records = method.classify(images, list(range(len(images))), lambda: not context.is_active())
        k = min(request.top_k or 5, len(class_names))
        if method.name == "clip":
            logits = torch.tensor([r["logits"] for r in records], dtype=torch.float32)
            probs = logits.softmax(dim=-1)
            top = probs.topk(k, dim=-1)
            return pb.ZeroShotResponse(
                logits=codec.encode(logits),
                probs=codec.encode(probs),
                top_k=[_top_k(idx.tolist(), class_names, p.tolist()) for p, idx in zip(*top, strict=True)],
            )
        results = [_diffusion_result(r, class_names) for r in records]
        return pb.ZeroShotResponse(
            top_k=[_top_k(_elimination_order(r)[:k], class_names) for r in results], diffusion=results
        )

    def EvaluateZeroShot(self, request: pb.EvaluateZeroShotRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, "zsc-zeroshot")
        roots = self.service.runtime.data_roots
        root = resolve_uri(request.data_uri, roots)
        if min(request.limit, request.batch_size, request.shard_start, request.shard_stop) < 0:
            raise InvalidArgument("limit, batch_size and the shard bounds must be >= 0")
        dataset = ImageFolder.open(root, request.limit, request.class_names, request.folder_to_class)
        stop = request.shard_stop or len(dataset)
        if not request.shard_start < stop <= len(dataset):
            raise InvalidArgument(f"shard [{request.shard_start}, {stop}) is not a range of the {len(dataset)} samples")
        results_path = (
            output_file(request.results_uri, roots, "results_uri", "the JSONL file") if request.results_uri else None
        )
        class_names = validate_class_names(dataset.classes)  # label order: as given, else the sorted folders
        method = self.service.method(request.method, class_names, request.prompts, request.diffusion)
        params: dict[str, Any] = {
            "method": method.name,
            "profile": self.service.runtime.profile.name,
            "data_uri": str(root),
            "limit": request.limit,
            "shard": f"{request.shard_start}:{stop}",
            "n_images": stop - request.shard_start,
            "n_classes": len(class_names),
            "class_names": ",".join(class_names),
            **({"folder_to_class": json.dumps(dataset.mapped_folders())} if dataset.mapped_folders() else {}),
            **method.params,
        }
        batch_size = request.batch_size or (8 if method.name == "diffusion" else 64)

        def job(ctx: JobContext) -> pb.EvaluationResult:
            with tracking.run(experiment, f"{method.name}-zeroshot") as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)
                run.set_tags({"zsc.profile": params["profile"], "zsc.kind": "zeroshot-eval"})
                result = evaluate_folder(
                    dataset,
                    lambda images, indices: method.classify(images, indices, ctx.should_stop),
                    batch_size=batch_size,
                    shard=(request.shard_start, stop),
                    results_path=results_path,
                    on_progress=lambda done, total: ctx.progress(done, total),
                    should_stop=ctx.should_stop,
                )
                extra = {}
                if method.name == "diffusion":
                    passes = [r["unet_passes"] for r in result.records]
                    extra["unet_passes_per_image"] = sum(passes) / max(1, len(passes))
                    ctx.progress(len(result.records), None, **extra)
                log_evaluation(run, result, class_names, extra)
                return evaluation_result(result, class_names, run.id)

        return self.service.runtime.operations.start(
            "zsc.classification.v1.Classification/EvaluateZeroShot",
            job,
            total=stop - request.shard_start,
            unit="images",
        )


def _top_k(indices: list[int], class_names: tuple[str, ...], probs: list[float] | None = None) -> pb.TopK:
    return pb.TopK(indices=indices, labels=[class_names[j] for j in indices], probs=probs or [])


def _diffusion_result(record: dict[str, Any], class_names: tuple[str, ...]) -> pb.DiffusionImageResult:
    stages = [
        pb.StageErrors(class_indices=[int(c) for c in errors], errors=list(errors.values()))
        for errors in record["stage_errors"]
    ]
    label = record["pred"]
    return pb.DiffusionImageResult(
        label=label,
        class_name=class_names[label],
        prompt=record["prompt"],
        stages=stages,
        unet_passes=record["unet_passes"],
    )


def _elimination_order(result: pb.DiffusionImageResult) -> list[int]:
    """Classes ranked as the Diffusion Classifier ranks them: deeper stages first, lower error first within one."""
    order: list[int] = []
    for stage in reversed(result.stages):
        for _, c in sorted(zip(stage.errors, stage.class_indices, strict=True)):
            if c not in order:
                order.append(c)
    return order


def evaluation_result(result: FolderEvaluation, class_names: tuple[str, ...], run_id: str) -> pb.EvaluationResult:
    return pb.EvaluationResult(
        class_names=class_names,
        n_images=len(result.labels),
        top1=result.top1,
        macro_accuracy=result.macro,
        per_class_accuracy=result.per_class,
        confusion=codec.encode(result.confusion),
        mlflow_run_id=run_id,
        seconds_per_image=result.seconds_per_image,
    )


def log_evaluation(
    run: tracking.Run, result: FolderEvaluation, class_names: tuple[str, ...], extra: dict[str, float] | None = None
) -> None:
    """Metrics, the confusion matrix as plot and table, and per-class accuracy as plot and metrics."""
    names = list(class_names)
    run.log_metrics(
        {
            **(extra or {}),
            "top1": result.top1,
            "macro_accuracy": result.macro,
            "seconds_per_image": result.seconds_per_image,
            **dict(zip(tracking.metric_keys("accuracy", names), result.per_class, strict=True)),
        }
    )
    confusion = result.confusion.numpy()
    run.log_figure(confusion_figure(confusion, names), "confusion_matrix.png")
    run.log_figure(per_class_figure(result.per_class, names), "per_class_accuracy.png")
    run.log_table({"true": names, **{n: confusion[:, j].tolist() for j, n in enumerate(names)}}, "confusion.json")
    run.log_table({"class": names, "accuracy": result.per_class}, "per_class_accuracy.json")


def create_service(runtime: ServiceRuntime) -> ClassificationService:
    return ClassificationService(runtime)
