"""Synthesis service: diverse synthetic image datasets from class names, the "bag of tricks" of methods.md §1.

A thin gRPC layer over the core (``core/planner``, ``core/generator``, ``core/writer``, ``core/dataset``): each RPC
checks and converts its request into a plan (``requests``), starts the tracked job or runs the preview, and converts
the result. The service holds the model, the caps, the running jobs' output claims and the preview slots; a
GenerateDataset run records its params, counts, images/s and contact sheets in MLflow.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc

from zsc.common.v1 import common_pb2
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from zsc.models.diffusion import SDComponents, create_sd_components
from zsc.runtime.jobs import TrackedRun, start_tracked
from zsc.runtime.server import ServiceRuntime
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc.synthesis.v1 import synthesis_pb2_grpc as pb_grpc
from zsc_synthesis import requests
from zsc_synthesis.core import dataset, planner, writer

CAP_ENV = "ZSC_SYNTHESIS_MAX_IMAGES_PER_CLASS"
TOTAL_CAP_ENV = "ZSC_SYNTHESIS_MAX_IMAGES"
DEFAULT_MAX_IMAGES = 2_000_000  # per request: ImageNet-1k at the paper's 2,000 per class; a plan is held in memory
MAX_CONCURRENT_PREVIEWS = 2


@dataclass(frozen=True)
class _Claim:
    """A running job's output directory and part of the plan, so two jobs on this server never write one file."""

    root: Path
    classes: frozenset[str] | None
    start: int
    stop: float

    @classmethod
    def of(cls, root: Path, shard: writer.Shard | None) -> _Claim:
        shard = shard or writer.Shard()
        classes = None if shard.classes is None else frozenset(shard.classes)
        return cls(root, classes, shard.start, float("inf") if shard.stop is None else shard.stop)

    def overlaps(self, other: _Claim) -> bool:
        if self.root != other.root:
            return False
        classes = self.classes is None or other.classes is None or bool(self.classes & other.classes)
        return classes and self.start < other.stop and other.start < self.stop


class SynthesisService:
    """The profile's text-to-image model and the service's caps, configured through the environment:
    images per class (ZSC_SYNTHESIS_MAX_IMAGES_PER_CLASS, default 100,000) and per request
    (ZSC_SYNTHESIS_MAX_IMAGES, default 2,000,000)."""

    grpc_services: ClassVar[list[str]] = ["zsc.synthesis.v1.Synthesis"]

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.parts: SDComponents | None = None
        self.max_images_per_class = _env_int(CAP_ENV, planner.MAX_IMAGES_PER_CLASS)
        self.max_images = _env_int(TOTAL_CAP_ENV, DEFAULT_MAX_IMAGES)
        self._claims: dict[str, _Claim] = {}
        self._lock = threading.Lock()
        self.previews = threading.BoundedSemaphore(MAX_CONCURRENT_PREVIEWS)

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_SynthesisServicer_to_server(SynthesisServicer(self), server)

    def load(self) -> None:
        profile = self.runtime.profile
        if profile.text_to_image:
            self.parts = create_sd_components(
                profile.text_to_image, profile.torch_device(), profile.torch_dtype(), seed=profile.seed
            )

    def parts_or_fail(self) -> SDComponents:
        self.runtime.require_ready()
        if self.parts is None:
            raise FailedPrecondition(
                f"profile {self.runtime.profile.name!r} has no text-to-image model, so synthesis is unavailable"
            )
        return self.parts

    def claim(self, claim: _Claim) -> str:
        """Reserve a part of an output directory; refuse one that a running job on this server writes."""
        with self._lock:
            for other in self._claims.values():
                if claim.overlaps(other):
                    raise FailedPrecondition(
                        f"{claim.root} is being written by a running job for an overlapping part of the plan; "
                        "wait for it or cancel it"
                    )
            key = uuid.uuid4().hex
            self._claims[key] = claim
            return key

    def release(self, key: str) -> None:
        with self._lock:
            self._claims.pop(key, None)


class SynthesisServicer(pb_grpc.SynthesisServicer):
    def __init__(self, service: SynthesisService) -> None:
        self.service = service

    def GenerateDataset(
        self, request: pb.GenerateDatasetRequest, context: grpc.ServicerContext
    ) -> common_pb2.Operation:
        service = self.service
        plan = requests.plan_generate_dataset(
            request,
            service.parts_or_fail,
            service.runtime.data_roots,
            service.runtime.profile.name,
            service.max_images_per_class,
            service.max_images,
        )
        job = plan.dataset
        key = service.claim(_Claim.of(job.root, job.shard))

        def body(run: TrackedRun) -> pb.GenerateDatasetResult:
            run.run.log_dict(job.request.to_dict(), "request.json")
            result = dataset.generate_dataset(job, plan.parts, run.progress, run.should_stop)
            run.log_metrics(requests.generate_dataset_metrics(result))
            if result.cancelled:  # the writer returns, so the counts are logged; raising ends the run KILLED
                raise Cancelled(f"synthesis into {job.root} cancelled after {result.generated} new images")
            _log_contact_sheets(run, job)
            return requests.generate_dataset_response(result, job.root, run.run_id)

        return start_tracked(service.runtime.operations, plan.job, body, release=lambda: service.release(key))

    def GenerateImages(
        self, request: pb.GenerateImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GeneratedImage]:
        service = self.service
        plan = requests.plan_generate_images(request, service.parts_or_fail)
        if not service.previews.acquire(blocking=False):
            raise ResourceExhausted(f"{MAX_CONCURRENT_PREVIEWS} previews are already running; retry shortly")
        try:
            for job, image in plan.generator.preview(plan.jobs, plan.batch_size, lambda: not context.is_active()):
                yield requests.generated_image(job, image)
        finally:
            service.previews.release()

    def ListTricks(self, request: pb.ListTricksRequest, context: grpc.ServicerContext) -> pb.ListTricksResponse:
        model = self.service.runtime.profile.text_to_image or ""
        return requests.list_tricks_response(self.service.max_images_per_class, model)


def _log_contact_sheets(run: TrackedRun, job: dataset.DatasetJob) -> None:
    """The core's contact sheets as artifacts, each saved and logged before the next is drawn."""
    with tempfile.TemporaryDirectory(prefix="zsc-sheet-") as tmp:
        for folder, name, sheet in dataset.contact_sheets(job):
            path = Path(tmp) / name
            sheet.save(path)
            run.run.log_artifact(path, folder)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise InvalidArgument(f"{name} must be a positive integer, got {raw!r}")
    return value


def create_service(runtime: ServiceRuntime) -> SynthesisService:
    return SynthesisService(runtime)
