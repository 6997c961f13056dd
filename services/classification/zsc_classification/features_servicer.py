"""Features service (``zsc.classification.v1.Features``): ExtractFeatures writes a zsc feature set of an ImageFolder.

It lives in the classification service because that service owns the image models: the profile's CLIP, which
``ClassificationService.load`` already loads, and the profile's own image and text encoders when it names them
(the ``lite`` profile). A separate gRPC service keeps its contract apart from Classification's. The lite encoders
load on the first extraction, not at service start, because most callers of the classification service never
extract features.

A thin layer: validate the request on the RPC thread (bad input gets INVALID_ARGUMENT before any job starts), then
run the core (``core/extract.py``) as an Operation with progress and cancel, logged to MLflow.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from zsc import tracking
from zsc.classification.v1 import features_pb2 as pb
from zsc.classification.v1 import features_pb2_grpc as pb_grpc
from zsc.data import ImageFolder, output_file, resolve_uri
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument
from zsc.features import ALIGNMENT_ID_KEY, read_alignment
from zsc.models.lite import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from zsc.runtime.operations import JobContext
from zsc_classification.core.extract import (
    DEFAULT_TEMPLATE,
    Extractors,
    FeatureCache,
    clip_extractors,
    default_cache_dir,
    extract_features,
    lite_extractors,
    weights_fingerprint,
)
from zsc_classification.core.prompts import validate_class_names

if TYPE_CHECKING:
    from zsc.models.lite import ImageEncoder, TextEncoder
    from zsc_classification.servicer import ClassificationService

KIND = "zsc.classification.v1.Features/ExtractFeatures"
EXPERIMENT = "zsc-features"
DEFAULT_BATCH = 64
MAX_BATCH = 1024


class FeatureModels:
    """The profile's extractors: its image_encoder + text_encoder pair when it names them, else CLIP's towers (from
    the classification service). The encoder pair loads once, on first use, under a lock (two jobs may ask at once)."""

    def __init__(self, service: ClassificationService) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._image: ImageEncoder | None = None
        self._text: TextEncoder | None = None
        self._clip_fingerprint = ""

    def check(self, image_size: int) -> None:
        """FAILED_PRECONDITION or INVALID_ARGUMENT now, on the RPC thread, for what no job could do."""
        profile = self.service.runtime.profile
        if bool(profile.image_encoder) != bool(profile.text_encoder):
            raise FailedPrecondition(
                f"profile {profile.name!r} must name both image_encoder and text_encoder, or neither"
            )
        if not profile.image_encoder and self.service.clip is None:
            raise FailedPrecondition(
                f"profile {profile.name!r} has no feature models (no image_encoder/text_encoder and no CLIP)"
            )
        if image_size and not profile.image_encoder:
            raise InvalidArgument("image_size applies to the profile's image_encoder; CLIP's input size is fixed")

    def extractors(self, image_size: int) -> Extractors:
        profile = self.service.runtime.profile
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
            if self.service.clip is None:
                raise FailedPrecondition(f"profile {profile.name!r} has no CLIP model")
            bundle = self.service.clip.bundle
            if not self._clip_fingerprint:
                self._clip_fingerprint = weights_fingerprint(bundle.model)
            return clip_extractors(bundle, self._clip_fingerprint)


class FeaturesServicer(pb_grpc.FeaturesServicer):
    def __init__(self, service: ClassificationService) -> None:
        self.service = service
        self.models = FeatureModels(service)

    def ExtractFeatures(self, request: pb.ExtractFeaturesRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        runtime = self.service.runtime
        runtime.require_ready()
        roots = runtime.data_roots
        if min(request.limit, request.batch_size, request.image_size) < 0:
            raise InvalidArgument("limit, batch_size and image_size must be >= 0")
        if request.batch_size > MAX_BATCH:
            raise InvalidArgument(f"batch_size {request.batch_size} is over the limit of {MAX_BATCH}")
        if request.image_size and not MIN_IMAGE_SIZE <= request.image_size <= MAX_IMAGE_SIZE:
            raise InvalidArgument(
                f"image_size must be 0 or lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {request.image_size}"
            )
        root = resolve_uri(request.data_uri, roots)
        out = output_file(request.output_uri, roots)
        cache_dir: Path | None = None
        if not request.disable_cache:
            cache_dir = resolve_uri(request.cache_uri, roots, must_exist=False) if request.cache_uri else None
            cache_dir = cache_dir or default_cache_dir()
            if cache_dir.exists() and not cache_dir.is_dir():
                raise InvalidArgument(f"cache_uri {request.cache_uri!r} is not a directory")
        template = request.prompt_template or DEFAULT_TEMPLATE
        if template.count("{}") != 1 or len(template) > 1000:
            raise InvalidArgument(f"prompt_template {template[:80]!r} must contain exactly one '{{}}'")
        self.models.check(request.image_size)
        dataset = ImageFolder.open(root, request.limit, request.class_names, request.folder_to_class)
        names = validate_class_names(dataset.classes)  # label order: as given, else the sorted folders
        alignment = read_alignment(request.alignment_uri, roots)[1] if request.alignment_uri else None
        if alignment is not None and (missing := [n for n in names if n not in alignment.class_names]):
            raise InvalidArgument(
                f"alignment_uri has no aligned text feature of class {missing[0]!r}; align with every class named"
            )
        profile = runtime.profile
        params: dict[str, Any] = {
            "profile": profile.name,
            "data_uri": str(root),
            "output_uri": str(out),
            "limit": request.limit,
            "n_images": len(dataset),
            "n_classes": len(names),
            "batch_size": request.batch_size or DEFAULT_BATCH,
            "image_size": request.image_size,
            "prompt_template": template,
            "cache_dir": str(cache_dir) if cache_dir else "",
            "class_names": ",".join(names),
            "alignment_uri": request.alignment_uri,
            **({"folder_to_class": json.dumps(dataset.mapped_folders())} if dataset.mapped_folders() else {}),
        }
        tags = {"zsc.profile": profile.name, "zsc.kind": "extract-features"}
        if alignment is not None:
            tags[ALIGNMENT_ID_KEY] = alignment.id

        def job(ctx: JobContext) -> pb.ExtractFeaturesResult:
            with tracking.run(experiment, "extract-features", tags) as run:
                ctx.set_mlflow_run(run.id)
                ctx.progress(0, len(dataset), message="loading models")
                extractors = self.models.extractors(request.image_size)
                if alignment is not None and alignment.dim != extractors.dim:
                    raise FailedPrecondition(
                        f"the alignment has D={alignment.dim} but {extractors.image_ref} image features have "
                        f"D={extractors.dim}"
                    )
                run.log_params({**params, "image_encoder": extractors.image_ref, "text_encoder": extractors.text_ref})
                run.set_tags({"zsc.image_model_id": extractors.image_model_id[:5000]})
                cache = FeatureCache(cache_dir, extractors.image_model_id, extractors.dim) if cache_dir else None
                try:
                    result = extract_features(
                        dataset,
                        extractors,
                        class_names=names,
                        template=template,
                        batch_size=request.batch_size or DEFAULT_BATCH,
                        cache=cache,
                        on_progress=lambda done, total: ctx.progress(done, total),
                        should_stop=ctx.should_stop,
                        metadata={"profile": profile.name, "data_uri": str(root), "mlflow_run_id": run.id},
                    )
                except Cancelled as err:
                    raise Cancelled(str(err)) from err
                ctx.check_cancelled()
                # DFZSL moves every image feature into FLPT's space; the cache keeps the encoder's own features.
                written = alignment.apply(result.features) if alignment is not None else result.features
                out.parent.mkdir(parents=True, exist_ok=True)
                written.save(out)
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
                return pb.ExtractFeaturesResult(
                    features_uri=str(out),
                    n_images=n,
                    class_names=names,
                    dim=extractors.dim,
                    text_dim=extractors.text_dim,
                    image_encoder=extractors.image_ref,
                    text_encoder=extractors.text_ref,
                    aligned=extractors.aligned,
                    cache_hits=result.cache_hits,
                    computed=result.computed,
                    dataset_sha256=result.dataset_sha256,
                    seconds=result.seconds,
                    mlflow_run_id=run.id,
                    alignment_id=alignment.id if alignment is not None else "",
                )

        return runtime.operations.start(KIND, job, total=len(dataset), unit="images")


def add_features_to_server(service: ClassificationService, server: grpc.Server) -> None:
    pb_grpc.add_FeaturesServicer_to_server(FeaturesServicer(service), server)
