"""Synthesis service: diverse synthetic image datasets from class names, the "bag of tricks" of methods.md §1.

A thin gRPC layer over the core (``core/planner``, ``core/generator``, ``core/writer``): it converts and validates
the request, checks the output directory before anything starts, runs ``writer.synthesize`` as an Operation with
progress and cancel, and records each run in MLflow (params, counts, images/s, contact sheets).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
from google.protobuf import struct_pb2

from zsc import tracking
from zsc.common.v1 import common_pb2
from zsc.data import resolve_uri
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from zsc.models.diffusion import SCHEDULERS, SDComponents, create_sd_components
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc.synthesis.v1 import synthesis_pb2_grpc as pb_grpc
from zsc_synthesis.core import planner, writer
from zsc_synthesis.core.generator import DOWNSAMPLERS, GenerationConfig, ImageGenerator
from zsc_synthesis.core.planner import ClassSpec, Job

EXPERIMENT = "zsc-synthesis"
KIND = "zsc.synthesis.v1.Synthesis/GenerateDataset"
CAP_ENV = "ZSC_SYNTHESIS_MAX_IMAGES_PER_CLASS"
TOTAL_CAP_ENV = "ZSC_SYNTHESIS_MAX_IMAGES"
DEFAULT_MAX_IMAGES = 2_000_000  # per request: ImageNet-1k at the paper's 2,000 per class; a plan is held in memory
MAX_PREVIEW_IMAGES = 32
# A synchronous preview's UNet work, in images x steps at the model's native resolution (a larger native resolution
# counts its extra area): 32 images at 50 steps. Bigger jobs are GenerateDataset's, an Operation that can be cancelled.
MAX_PREVIEW_COST = MAX_PREVIEW_IMAGES * 50
MAX_CONCURRENT_PREVIEWS = 2
MAX_CLASSES = 10_000
MAX_CLASS_NAME_BYTES = 200  # a class is a folder name; filesystems allow 255 bytes
MAX_RESOLUTION = 2048  # target and native: far above SD's 768, far below an out-of-memory request
MAX_STEPS = 1000  # SD's number of training timesteps
MAX_BATCH_SIZE = 256
SHEET_PER_CLASS = 8
SHEET_ROWS = 32  # classes per contact sheet
SHEET_MAX_CLASSES = 256  # sheets cover the first classes only; more would bloat the run
SHEET_CELL = 128  # pixels a side at most per cell
GENERATION_DEFAULTS = GenerationConfig()
TRICK_KINDS = {"prompt": pb.PROMPT, "guidance": pb.GUIDANCE, "mix": pb.MIX}


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
        if not request.output_uri:
            raise InvalidArgument("output_uri is empty")
        root = resolve_uri(request.output_uri, service.runtime.data_roots, must_exist=False)
        synthesis = build_request(request, service.max_images_per_class, service.max_images)
        shard = _shard(request.shard) if request.HasField("shard") else None
        batch_size = _batch_size(request.batch_size)
        parts = service.parts_or_fail()
        jobs = writer.preflight(
            synthesis,
            parts,
            root,
            shard=shard,
            batch_size=batch_size,
            max_images_per_class=service.max_images_per_class,
        )
        if not jobs:
            raise InvalidArgument(f"the shard selects no images of the {synthesis.images_per_class} per class")
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        params = _params(synthesis, parts, service.runtime.profile.name, root, shard, batch_size)
        tags = {
            "zsc.kind": "synthesis",
            "zsc.profile": service.runtime.profile.name,
            "zsc.seed": str(synthesis.seed),
            "zsc.model": parts.ref,
            "zsc.fingerprint": writer.request_fingerprint(synthesis, parts.ref),
        }
        cap = service.max_images_per_class

        def job(ctx: JobContext) -> pb.GenerateDatasetResult:
            with tracking.run(experiment, f"synthesis-{root.name}", tags) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)
                run.log_dict(synthesis.to_dict(), "request.json")
                result = writer.synthesize(
                    synthesis,
                    parts,
                    root,
                    shard=shard,
                    batch_size=batch_size,
                    on_progress=_progress_reporter(ctx),
                    should_stop=ctx.should_stop,
                    max_images_per_class=cap,
                )
                run.log_metrics(
                    {
                        "total": result.total,
                        "generated": result.generated,
                        "skipped": result.skipped,
                        "computed": result.computed,
                        "images_per_second": result.images_per_second,
                        "seconds": result.seconds,
                    }
                )
                if result.cancelled:
                    # the writer returns instead of raising; raising here ends the run KILLED and the op CANCELLED
                    raise Cancelled(f"synthesis into {root} cancelled after {result.generated} new images")
                _log_contact_sheets(run, root, _shard_classes(synthesis, shard))
                return pb.GenerateDatasetResult(
                    total=result.total,
                    generated=result.generated,
                    skipped=result.skipped,
                    computed=result.computed,
                    images_per_second=result.images_per_second,
                    seconds=result.seconds,
                    output_uri=str(root),
                    manifest_uri=str(root / writer.MANIFEST),
                    mlflow_run_id=run.id,
                    batch_size=result.batch_size,
                )

        key = service.claim(_Claim.of(root, shard))

        def run_and_release(ctx: JobContext) -> pb.GenerateDatasetResult:
            try:
                return job(ctx)
            finally:
                service.release(key)

        try:
            return service.runtime.operations.start(KIND, run_and_release, total=len(jobs), unit="images")
        except BaseException:
            service.release(key)
            raise

    def GenerateImages(self, request: pb.GenerateImagesRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        service = self.service
        synthesis = build_request(request, MAX_PREVIEW_IMAGES, MAX_PREVIEW_IMAGES)
        batch_size = _batch_size(request.batch_size) or writer.DEFAULT_BATCH_SIZE
        parts = service.parts_or_fail()
        generator = ImageGenerator(parts, synthesis.generation)
        _check_preview_cost(len(synthesis.plan(MAX_PREVIEW_IMAGES)), generator)
        if not service.previews.acquire(blocking=False):
            raise ResourceExhausted(f"{MAX_CONCURRENT_PREVIEWS} previews are already running; retry shortly")
        try:
            # the dataset's chunk grid, so a preview shows the very pixels GenerateDataset writes with this batch size
            chunks: dict[tuple[str, int], list[Job]] = {}
            for j in synthesis.plan(MAX_PREVIEW_IMAGES):
                chunks.setdefault((j.class_name, j.index // batch_size), []).append(j)
            for chunk in chunks.values():
                images = generator.generate(chunk, should_stop=lambda: not context.is_active())
                for job, image in zip(chunk, images, strict=True):
                    buf = io.BytesIO()
                    image.save(buf, format="PNG")
                    yield pb.GeneratedImage(
                        image=common_pb2.Image(data=buf.getvalue(), mime="image/png"), job=job_record(job)
                    )
        finally:
            service.previews.release()

    def ListTricks(self, request: pb.ListTricksRequest, context: grpc.ServicerContext) -> pb.ListTricksResponse:
        tricks = []
        for info in planner.list_tricks():
            defaults = struct_pb2.Struct()
            defaults.update(json.loads(json.dumps(info.defaults)))  # tuples to lists, all values JSON
            tricks.append(
                pb.TrickInfo(
                    name=info.name, kind=TRICK_KINDS[info.kind], description=info.description, defaults=defaults
                )
            )
        lo, hi = planner.DEFAULT_GUIDANCE_RANGE
        return pb.ListTricksResponse(
            tricks=tricks,
            default_domains=list(planner.DEFAULT_DOMAINS),
            domain_sets={name: pb.DomainList(domains=list(d)) for name, d in planner.DOMAIN_SETS.items()},
            templates=dict(planner.TEMPLATES),
            image_templates=dict(planner.IMAGE_TEMPLATES),
            schedulers=list(SCHEDULERS),
            downsamplers=list(DOWNSAMPLERS),
            default_steps=GENERATION_DEFAULTS.steps,
            default_scheduler=GENERATION_DEFAULTS.scheduler,
            default_batch_size=writer.DEFAULT_BATCH_SIZE,
            default_guidance_scale=planner.DEFAULT_GUIDANCE,
            default_guidance_range=pb.GuidanceRange(lo=lo, hi=hi),
            max_images_per_class=self.service.max_images_per_class,
            max_preview_images=MAX_PREVIEW_IMAGES,
            model=self.service.runtime.profile.text_to_image or "",
        )


def build_request(
    request: pb.GenerateDatasetRequest | pb.GenerateImagesRequest, max_images_per_class: int, max_images: int
) -> writer.SynthesisRequest:
    """A validated core request from the fields both RPCs share; every problem is an InvalidArgument with one line."""
    classes, images_per_class, tricks = request.classes, request.images_per_class, request.tricks
    if len(classes) > MAX_CLASSES:
        raise InvalidArgument(f"{len(classes)} classes is over the limit of {MAX_CLASSES}")
    for c in classes:
        if len(c.name.encode("utf-8")) > MAX_CLASS_NAME_BYTES:
            raise InvalidArgument(f"class name {c.name[:40]!r}... is longer than {MAX_CLASS_NAME_BYTES} bytes")
    # checked before planning, which holds every job in memory
    if images_per_class > max_images_per_class:
        raise InvalidArgument(f"images per class {images_per_class} is over the cap of {max_images_per_class}")
    if len(classes) * images_per_class > max_images:
        raise InvalidArgument(
            f"{len(classes)} classes x {images_per_class} images is over the cap of {max_images} images per request"
        )
    if tricks.tricks and tricks.merge:
        raise InvalidArgument("give tricks.tricks or tricks.merge, not both")
    if tricks.domains and tricks.domain_set:
        raise InvalidArgument("give tricks.domains or tricks.domain_set, not both")
    spec: Any = [(m.tricks, m.share) for m in tricks.merge] if tricks.merge else (tricks.tricks or "class_prompt")
    guidance_range = None
    if tricks.HasField("guidance_range"):
        guidance_range = (tricks.guidance_range.lo, tricks.guidance_range.hi)
    return writer.SynthesisRequest.create(
        [ClassSpec(c.name, c.description) for c in classes],
        images_per_class,
        spec,
        request.seed,
        domains=list(tricks.domains) or tricks.domain_set or None,
        template=tricks.template or None,
        guidance_scale=tricks.guidance_scale if tricks.HasField("guidance_scale") else None,
        guidance_range=guidance_range,
        negative_prompt=request.generation.negative_prompt,
        image_template=tricks.image_template or None,
        generation=_generation(request.generation, request.resolution),
    )


def job_record(job: Job) -> pb.JobRecord:
    return pb.JobRecord(
        class_name=job.class_name,
        index=job.index,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        domain=job.domain,
        trick=job.trick,
        guidance=job.guidance,
        seed=job.seed,
        file=job.file,
    )


def _generation(settings: pb.GenerationSettings, resolution: int) -> GenerationConfig:
    limits = {
        "steps": (settings.steps, MAX_STEPS),
        "native_resolution": (settings.native_resolution, MAX_RESOLUTION),
        "resolution": (resolution, MAX_RESOLUTION),
    }
    for name, (value, limit) in limits.items():
        if not 0 <= value <= limit:
            raise InvalidArgument(f"{name} must be in [0, {limit}] (0 means the default), got {value}")
    return GenerationConfig(
        steps=settings.steps or GENERATION_DEFAULTS.steps,
        scheduler=settings.scheduler or GENERATION_DEFAULTS.scheduler,
        native_resolution=settings.native_resolution or None,
        size=resolution or None,
        downsample=settings.downsample or GENERATION_DEFAULTS.downsample,
    )


def _check_preview_cost(images: int, generator: ImageGenerator) -> None:
    """Refuse a preview whose UNet work is over MAX_PREVIEW_COST (see there): it would hold an RPC thread for long."""
    area = (generator.native_resolution / generator.parts.native_resolution) ** 2
    cost = images * generator.config.steps * area
    if cost > MAX_PREVIEW_COST:
        raise InvalidArgument(
            f"a preview of {images} images x {generator.config.steps} steps at native resolution "
            f"{generator.native_resolution} is {cost:.0f} image-steps at the model's native "
            f"{generator.parts.native_resolution}, over the preview limit of {MAX_PREVIEW_COST}; use GenerateDataset"
        )


def _shard(shard: pb.Shard) -> writer.Shard:
    if shard.start < 0 or shard.stop < 0:
        raise InvalidArgument(f"shard start and stop must be >= 0, got [{shard.start}, {shard.stop})")
    return writer.Shard(tuple(shard.classes) or None, shard.start, shard.stop or None)


def _batch_size(value: int) -> int | None:
    if not 0 <= value <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"batch_size must be in [0, {MAX_BATCH_SIZE}] (0 means the default), got {value}")
    return value or None


def _shard_classes(request: writer.SynthesisRequest, shard: writer.Shard | None) -> list[str]:
    names = [c.name for c in request.classes]
    if shard is None or shard.classes is None:
        return names
    wanted = set(shard.classes)
    return [n for n in names if n in wanted]


def _params(
    request: writer.SynthesisRequest,
    parts: SDComponents,
    profile: str,
    root: Path,
    shard: writer.Shard | None,
    batch_size: int | None,
) -> dict[str, Any]:
    gen = request.generation
    return {
        "profile": profile,
        "model": parts.ref,
        "output_uri": str(root),
        "n_classes": len(request.classes),
        "classes": ",".join(c.name for c in request.classes),
        "descriptions": json.dumps({c.name: c.description for c in request.classes if c.description}),
        "images_per_class": request.images_per_class,
        "tricks": json.dumps([[config.name, share] for config, share in request.tricks]),
        "templates": json.dumps({config.name: config.template for config, _ in request.tricks}),
        "domains": json.dumps(sorted({d for config, _ in request.tricks for d in config.domains})),
        "guidance": json.dumps(
            {
                config.name: config.guidance_range if config.guidance_mode == "uniform" else config.guidance_scale
                for config, _ in request.tricks
            }
        ),
        "negative_prompt": next((c.negative_prompt for c, _ in request.tricks), ""),
        "seed": request.seed,
        "steps": gen.steps,
        "scheduler": gen.scheduler,
        "native_resolution": gen.native_resolution or parts.native_resolution,
        "resolution": gen.size or 0,
        "downsample": gen.downsample,
        "shard": "all" if shard is None else json.dumps([shard.classes, shard.start, shard.stop]),
        "batch_size": batch_size or "directory default",
    }


def _progress_reporter(ctx: JobContext) -> Callable[[int, int], None]:
    """Forward the writer's progress with the images/s of this run (the already-present images do not count)."""
    start: dict[str, float] = {}

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if not start:
            start.update(done=done, time=now)
        elapsed = now - start["time"]
        rate = (done - start["done"]) / elapsed if elapsed > 0 else 0.0
        ctx.progress(done, total, images_per_second=rate)

    return report


def _log_contact_sheets(run: tracking.Run, root: Path, classes: list[str]) -> None:
    """One grid (a row of its first images per class) per SHEET_ROWS classes, for a reviewer's first look."""
    classes = classes[:SHEET_MAX_CLASSES]
    groups = [classes[i : i + SHEET_ROWS] for i in range(0, len(classes), SHEET_ROWS)]
    with tempfile.TemporaryDirectory(prefix="zsc-sheet-") as tmp:
        for i, group in enumerate(groups):
            name = "contact_sheet.png" if len(groups) == 1 else f"contact_sheet_{i:03d}.png"
            path = Path(tmp) / name
            writer.contact_sheet(root, SHEET_PER_CLASS, classes=group, cell=SHEET_CELL).save(path)
            run.log_artifact(path, None if len(groups) == 1 else "contact_sheets")


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
