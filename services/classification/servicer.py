"""Classification service: zero-shot classification (CLIP now; the Diffusion Classifier and downstream timm models
join as their issues land). A thin gRPC layer: validate, convert, call the core, report progress."""

from __future__ import annotations

from typing import ClassVar

import grpc

from zsc import codec, tracking
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.data import ImageFolder, decode_image, resolve_uri
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.models.clip import create_clip
from zsc.plots import confusion_figure, per_class_figure
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc_services.classification.core.clip_zeroshot import ClipZeroShot
from zsc_services.classification.core.evaluate import FolderEvaluation, evaluate_folder
from zsc_services.classification.core.prompts import resolve_templates, validate_class_names

MAX_INLINE_IMAGES = 256
METHOD_NAMES = {pb.ZERO_SHOT_METHOD_UNSPECIFIED: "clip", pb.CLIP: "clip", pb.DIFFUSION: "diffusion"}


class ClassificationService:
    grpc_services: ClassVar[list[str]] = ["zsc.classification.v1.Classification"]

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.clip: ClipZeroShot | None = None

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_ClassificationServicer_to_server(ClassificationServicer(self), server)

    def load(self) -> None:
        profile = self.runtime.profile
        if profile.clip:
            bundle = create_clip(profile.clip, profile.torch_device(), profile.torch_dtype(), seed=profile.seed)
            self.clip = ClipZeroShot(bundle)

    def clip_or_fail(self) -> ClipZeroShot:
        self.runtime.require_ready()
        if self.clip is None:
            raise FailedPrecondition(
                f"profile {self.runtime.profile.name!r} has no CLIP model, so CLIP zero-shot is unavailable"
            )
        return self.clip

    def classifier_for(self, method: int, class_names: tuple[str, ...], prompts: pb.PromptSpec):
        """A function from a list of images to [N, C] logits, for the requested method."""
        if method == pb.DIFFUSION:
            raise NotImplementedError("the DIFFUSION zero-shot method is not available in this build")
        if method not in METHOD_NAMES:
            raise InvalidArgument(f"unknown zero-shot method {method}")
        clip = self.clip_or_fail()
        templates = resolve_templates(list(prompts.templates), prompts.template_set)
        clip.text_classifier(class_names, templates)  # build (and cache) before any image work
        return lambda images: clip.logits(images, class_names, templates), {"templates": len(templates)}


class ClassificationServicer(pb_grpc.ClassificationServicer):
    def __init__(self, service: ClassificationService) -> None:
        self.service = service

    def ZeroShot(self, request: pb.ZeroShotRequest, context: grpc.ServicerContext) -> pb.ZeroShotResponse:
        class_names = validate_class_names(list(request.class_names))
        if not request.images:
            raise InvalidArgument("no images in the request")
        if len(request.images) > MAX_INLINE_IMAGES:
            raise InvalidArgument(
                f"{len(request.images)} inline images is over the limit of {MAX_INLINE_IMAGES}; "
                "use EvaluateZeroShot with a dataset reference"
            )
        if request.top_k < 0:
            raise InvalidArgument("top_k must be >= 0")
        classify, _ = self.service.classifier_for(request.method, class_names, request.prompts)
        images = [decode_image(im.data, what=f"image {i}") for i, im in enumerate(request.images)]
        logits = classify(images).float().cpu()
        probs = logits.softmax(dim=-1)
        k = min(request.top_k or 5, len(class_names))
        top = probs.topk(k, dim=-1)
        return pb.ZeroShotResponse(
            logits=codec.encode(logits),
            probs=codec.encode(probs),
            top_k=[
                pb.TopK(indices=idx.tolist(), labels=[class_names[j] for j in idx.tolist()], probs=p.tolist())
                for p, idx in zip(top.values, top.indices, strict=True)
            ],
        )

    def EvaluateZeroShot(self, request: pb.EvaluateZeroShotRequest, context: grpc.ServicerContext):
        root = resolve_uri(request.data_uri, self.service.runtime.data_roots)
        if request.limit < 0 or request.batch_size < 0:
            raise InvalidArgument("limit and batch_size must be >= 0")
        dataset = ImageFolder.open(root, limit=request.limit)
        class_names = validate_class_names(list(request.class_names) or dataset.classes)
        if len(class_names) != len(dataset.classes):
            raise InvalidArgument(
                f"{len(class_names)} class names given for {len(dataset.classes)} class folders in {root}"
            )
        classify, info = self.service.classifier_for(request.method, class_names, request.prompts)
        method = METHOD_NAMES[request.method]
        params = {
            "method": method,
            "profile": self.service.runtime.profile.name,
            "data_uri": str(root),
            "limit": request.limit,
            "n_images": len(dataset),
            "n_classes": len(class_names),
            "class_names": ",".join(class_names),
            **info,
        }

        def job(ctx: JobContext) -> pb.EvaluationResult:
            with tracking.run(request.experiment or "zsc-zeroshot", f"{method}-zeroshot") as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)
                run.set_tags({"zsc.profile": params["profile"], "zsc.kind": "zeroshot-eval"})
                result = evaluate_folder(
                    dataset,
                    lambda images: classify(images).argmax(dim=-1),
                    batch_size=request.batch_size or 64,
                    on_progress=lambda done, total: ctx.progress(done, total),
                    should_stop=ctx.should_stop,
                )
                log_evaluation(run, result, class_names)
                return pb.EvaluationResult(
                    class_names=class_names,
                    n_images=len(result.labels),
                    top1=result.top1,
                    macro_accuracy=result.macro,
                    per_class_accuracy=result.per_class,
                    confusion=codec.encode(result.confusion),
                    mlflow_run_id=run.id,
                    seconds_per_image=result.seconds_per_image,
                )

        return self.service.runtime.operations.start(
            "zsc.classification.v1.Classification/EvaluateZeroShot", job, total=len(dataset), unit="images"
        )


def log_evaluation(run: tracking.Run, result: FolderEvaluation, class_names: tuple[str, ...]) -> None:
    """Metrics, the confusion matrix as plot and table, and per-class accuracy as plot and metrics."""
    names = list(class_names)
    run.log_metrics(
        {
            "top1": result.top1,
            "macro_accuracy": result.macro,
            "seconds_per_image": result.seconds_per_image,
            **{f"accuracy/{n}": a for n, a in zip(names, result.per_class, strict=True)},
        }
    )
    confusion = result.confusion.numpy()
    run.log_figure(confusion_figure(confusion, names), "confusion_matrix.png")
    run.log_figure(per_class_figure(result.per_class, names), "per_class_accuracy.png")
    run.log_table({"true": names, **{n: confusion[:, j].tolist() for j, n in enumerate(names)}}, "confusion.json")
    run.log_table({"class": names, "accuracy": result.per_class}, "per_class_accuracy.json")


def create_service(runtime: ServiceRuntime) -> ClassificationService:
    return ClassificationService(runtime)
