"""Features service (``zsc.classification.v1.Features``): ExtractFeatures writes a zsc feature set of an ImageFolder.

It lives in the classification service because that service owns the image models: the profile's CLIP, which
``ClassificationService.load`` already loads, and the profile's own image and text encoders when it names them
(the ``lite`` profile). A separate gRPC service keeps its contract apart from Classification's. The lite encoders
load on the first extraction, not at service start, because most callers of the classification service never
extract features.

A thin layer: the request is checked and planned on the RPC thread (``requests.plan_extract_features``: bad input
gets INVALID_ARGUMENT before any job starts), then the core (``core/extract.py``) runs as a tracked job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from zsc.classification.v1 import features_pb2 as pb
from zsc.classification.v1 import features_pb2_grpc as pb_grpc
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.runtime.jobs import TrackedRun, start_tracked
from zsc.runtime.server import ServiceRuntime
from zsc_classification import requests
from zsc_classification.core.clip_zeroshot import ClipZeroShot
from zsc_classification.core.extract import (
    ExtractionResult,
    Extractors,
    FeatureCache,
    clip_extractors,
    extract_features,
    lite_extractors,
    weights_fingerprint,
    write_features,
)

if TYPE_CHECKING:
    from zsc.models.lite import ImageEncoder, TextEncoder

ClipSource = Callable[[], ClipZeroShot | None]  # the service's CLIP, once loaded


class FeatureModels:
    """The profile's extractors: its image_encoder + text_encoder pair when it names them, else CLIP's towers (from
    the classification service). The encoder pair loads once, on first use, under a lock (two jobs may ask at once)."""

    def __init__(self, runtime: ServiceRuntime, clip: ClipSource) -> None:
        self.runtime = runtime
        self.clip = clip
        self._lock = threading.Lock()
        self._image: ImageEncoder | None = None
        self._text: TextEncoder | None = None
        self._clip_fingerprint = ""

    def check(self, image_size: int) -> None:
        """FAILED_PRECONDITION or INVALID_ARGUMENT now, on the RPC thread, for what no job could do."""
        profile = self.runtime.profile
        if bool(profile.image_encoder) != bool(profile.text_encoder):
            raise FailedPrecondition(
                f"profile {profile.name!r} must name both image_encoder and text_encoder, or neither"
            )
        if not profile.image_encoder and self.clip() is None:
            raise FailedPrecondition(
                f"profile {profile.name!r} has no feature models (no image_encoder/text_encoder and no CLIP)"
            )
        if image_size and not profile.image_encoder:
            raise InvalidArgument("image_size applies to the profile's image_encoder; CLIP's input size is fixed")

    def extractors(self, image_size: int) -> Extractors:
        profile = self.runtime.profile
        with self._lock:
            if profile.image_encoder and profile.text_encoder:
                from zsc.models.lite import create_image_encoder, create_text_encoder

                if self._image is None:
                    self._image = create_image_encoder(
                        profile.image_encoder, profile.torch_device(), profile.torch_dtype()
                    )
                if self._text is None:
                    self._text = create_text_encoder(profile.text_encoder, profile.torch_device())
                return lite_extractors(self._image.with_image_size(image_size), self._text)
            clip = self.clip()
            if clip is None:
                raise FailedPrecondition(f"profile {profile.name!r} has no CLIP model")
            if not self._clip_fingerprint:
                self._clip_fingerprint = weights_fingerprint(clip.bundle.model)
            return clip_extractors(clip.bundle, self._clip_fingerprint)


class FeaturesServicer(pb_grpc.FeaturesServicer):
    def __init__(self, runtime: ServiceRuntime, clip: ClipSource) -> None:
        self.runtime = runtime
        self.models = FeatureModels(runtime, clip)

    def ExtractFeatures(self, request: pb.ExtractFeaturesRequest, context: grpc.ServicerContext):
        plan = requests.plan_extract_features(request, self.runtime, self.models.check)
        return start_tracked(self.runtime.operations, plan.job, lambda run: self._extract(plan, run))

    def _extract(self, plan: requests.ExtractPlan, run: TrackedRun) -> pb.ExtractFeaturesResult:
        run.progress(0, len(plan.dataset), message="loading models")
        extractors = self.models.extractors(plan.image_size)
        if plan.alignment is not None and plan.alignment.dim != extractors.dim:
            raise FailedPrecondition(
                f"the alignment has D={plan.alignment.dim} but {extractors.image_ref} image features have "
                f"D={extractors.dim}"
            )
        run.run.log_params({"image_encoder": extractors.image_ref, "text_encoder": extractors.text_ref})
        run.run.set_tags({"zsc.image_model_id": extractors.image_model_id[:5000]})
        cache = FeatureCache(plan.cache_dir, extractors.image_model_id, extractors.dim) if plan.cache_dir else None
        result = extract_features(
            plan.dataset,
            extractors,
            class_names=plan.class_names,
            template=plan.template,
            batch_size=plan.batch_size,
            cache=cache,
            on_progress=run.progress,
            should_stop=run.should_stop,
            metadata={**plan.metadata, "mlflow_run_id": run.run_id},
        )
        run.check_cancelled()
        write_features(result.features, plan.out, plan.alignment)
        _log_extract(run, result)
        return requests.extract_response(plan, extractors, result, run.run_id)


def _log_extract(run: TrackedRun, result: ExtractionResult) -> None:
    n = len(result.features)
    run.log_metrics(
        {
            "n_images": n,
            "cache_hits": result.cache_hits,
            "computed": result.computed,
            "seconds": result.seconds,
            "images_per_second": n / max(result.seconds, 1e-9),
        }
    )


def add_features_to_server(runtime: ServiceRuntime, clip: ClipSource, server: grpc.Server) -> None:
    pb_grpc.add_FeaturesServicer_to_server(FeaturesServicer(runtime, clip), server)
