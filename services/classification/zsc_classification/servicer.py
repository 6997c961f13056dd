"""Classification service: zero-shot classification with CLIP and the Diffusion Classifier, beside the Downstream
and Features services it serves too. A thin gRPC layer: plan the request (``requests.py``), run the core, convert."""

from __future__ import annotations

from typing import ClassVar

import grpc

from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.classification.v1 import downstream_pb2_grpc
from zsc.errors import FailedPrecondition
from zsc.models.clip import create_clip
from zsc.runtime.jobs import TrackedRun, start_tracked
from zsc.runtime.server import ServiceRuntime
from zsc_classification import requests
from zsc_classification.core.clip_zeroshot import ClipZeroShot
from zsc_classification.core.evaluate import evaluate_folder
from zsc_classification.downstream_servicer import DownstreamServicer
from zsc_classification.features_servicer import add_features_to_server
from zsc_classification.run_logs import log_evaluation
from zsc_classification.zeroshot import METHODS, DiffusionModelCache, ZeroShotMethod, clip_method, diffusion_method


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
        add_features_to_server(self.runtime, lambda: self.clip, server)

    def load(self) -> None:
        profile = self.runtime.profile
        if profile.clip:
            bundle = create_clip(profile.clip, profile.torch_device(), profile.torch_dtype(), seed=profile.seed)
            self.clip = ClipZeroShot(bundle)

    def method(
        self, method: int, class_names: tuple[str, ...], prompts: pb.PromptSpec, diffusion: pb.DiffusionOptions
    ) -> ZeroShotMethod:
        """The requested zero-shot method, ready for this class set (prompts encoded, schedule validated)."""
        name = METHODS.name(method)
        self.runtime.require_ready()
        if name == "diffusion":
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
        plan = requests.plan_zero_shot(request, self.service.method, self.service.runtime.decode_image)
        # The call's deadline and cancellation reach the core: an expired call stops computing.
        indices = list(range(len(plan.images)))
        records = plan.method.classify(list(plan.images), indices, lambda: not context.is_active())
        return requests.zero_shot_response(plan, records)

    def EvaluateZeroShot(self, request: pb.EvaluateZeroShotRequest, context: grpc.ServicerContext):
        plan = requests.plan_evaluate_zero_shot(request, self.service.runtime, self.service.method)
        return start_tracked(self.service.runtime.operations, plan.job, lambda run: _evaluate_zero_shot(plan, run))


def _evaluate_zero_shot(plan: requests.EvaluateZeroShotPlan, run: TrackedRun) -> pb.EvaluationResult:
    result = evaluate_folder(
        plan.dataset,
        lambda images, indices: plan.method.classify(images, indices, run.should_stop),
        batch_size=plan.batch_size,
        shard=plan.shard,
        results_path=plan.results_path,
        on_progress=run.progress,
        should_stop=run.should_stop,
    )
    extra = plan.method.metrics(result.records)
    if extra:
        run.progress(len(result.records), None, None, **extra)
    log_evaluation(run.run, result, plan.class_names, extra)
    return requests.evaluation_result(result, plan.class_names, run.run_id)


def create_service(runtime: ServiceRuntime) -> ClassificationService:
    return ClassificationService(runtime)
