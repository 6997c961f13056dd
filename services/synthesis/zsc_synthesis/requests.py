"""The synthesis RPCs' requests and results: each ``plan_<rpc>`` checks and converts a request into a plan on the
RPC thread (INVALID_ARGUMENT / FAILED_PRECONDITION before anything starts), each ``<rpc>_response`` builds the reply.

Defaults and bounds are the core's (``GenerationConfig``, ``DatasetJob``); the caps that hold per request (classes,
images, the preview's work) are the service's and live here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from PIL import Image

from zsc import tracking
from zsc.common.v1 import common_pb2
from zsc.config import bounds_of, config_defaults
from zsc.data import check_class_names, resolve_uri
from zsc.enums import ProtoEnum
from zsc.errors import InvalidArgument
from zsc.models.diffusion import SCHEDULERS, SDComponents
from zsc.runtime.jobs import JobPlan, lineage_tags
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc_synthesis.core import planner, writer
from zsc_synthesis.core.dataset import DatasetJob
from zsc_synthesis.core.generator import DOWNSAMPLERS, GenerationConfig, ImageGenerator
from zsc_synthesis.core.planner import ClassSpec, Job

EXPERIMENT = "zsc-synthesis"
KIND = "zsc.synthesis.v1.Synthesis/GenerateDataset"
MAX_CLASSES = 10_000
MAX_PREVIEW_IMAGES = 32
# A synchronous preview's UNet work, in images x steps at the model's native resolution (a larger native resolution
# counts its extra area): 32 images at 50 steps. Bigger jobs are GenerateDataset's, an Operation that can be cancelled.
MAX_PREVIEW_COST = MAX_PREVIEW_IMAGES * 50
TRICK_KIND = ProtoEnum(pb.TrickKind, default=None, field="kind")
GENERATION_DEFAULTS = config_defaults(GenerationConfig)
DATASET_METRICS = ("total", "generated", "skipped", "computed", "images_per_second", "seconds")


@dataclass(frozen=True)
class GenerateDatasetPlan:
    dataset: DatasetJob
    parts: SDComponents
    job: JobPlan


@dataclass(frozen=True)
class GenerateImagesPlan:
    generator: ImageGenerator
    jobs: tuple[Job, ...]
    batch_size: int


def plan_generate_dataset(
    request: pb.GenerateDatasetRequest,
    parts: Callable[[], SDComponents],
    roots: list[Path],
    profile: str,
    max_images_per_class: int,
    max_images: int,
) -> GenerateDatasetPlan:
    """The dataset job, checked as the writer will check it (the output directory included), and what its run
    records. ``parts`` gives the profile's model, or refuses when it has none."""
    if not request.output_uri:
        raise InvalidArgument("output_uri is empty")
    root = resolve_uri(request.output_uri, roots, must_exist=False)
    synthesis = build_request(request, max_images_per_class, max_images)
    shard = _shard(request.shard) if request.HasField("shard") else None
    batch_size = _zero_default(request.batch_size, "batch_size", DatasetJob)
    model = parts()
    dataset = DatasetJob(synthesis, root, shard, batch_size, max_images_per_class)
    jobs = dataset.preflight(model)
    if not jobs:
        raise InvalidArgument(f"the shard selects no images of the {synthesis.images_per_class} per class")
    fingerprint = writer.request_fingerprint(synthesis, model.ref)
    job = JobPlan(
        KIND,
        tracking.experiment_name(request.experiment, EXPERIMENT),
        f"synthesis-{root.name}",
        _params(dataset, model, profile),
        lineage_tags("synthesis", profile, synthesis.seed, model=model.ref, fingerprint=fingerprint),
        total=len(jobs),
        unit="images",
    )
    return GenerateDatasetPlan(dataset, model, job)


def plan_generate_images(request: pb.GenerateImagesRequest, parts: Callable[[], SDComponents]) -> GenerateImagesPlan:
    """A preview's jobs (the first of the plan) and its generator, refused when its UNet work is over the limit."""
    synthesis = build_request(request, MAX_PREVIEW_IMAGES, MAX_PREVIEW_IMAGES)
    batch_size = _zero_default(request.batch_size, "batch_size", DatasetJob) or writer.DEFAULT_BATCH_SIZE
    generator = ImageGenerator(parts(), synthesis.generation)
    jobs = tuple(synthesis.plan(MAX_PREVIEW_IMAGES))
    _check_preview_cost(len(jobs), generator)
    return GenerateImagesPlan(generator, jobs, batch_size)


def build_request(
    request: pb.GenerateDatasetRequest | pb.GenerateImagesRequest, max_images_per_class: int, max_images: int
) -> writer.SynthesisRequest:
    """A validated core request from the fields both RPCs share; every problem is an InvalidArgument with one line."""
    classes, images_per_class, tricks = request.classes, request.images_per_class, request.tricks
    if classes:  # the class rules first (no list is the planner's "no classes given")
        check_class_names([c.name for c in classes], "classes", MAX_CLASSES)
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


def generate_dataset_metrics(result: writer.SynthesisResult) -> dict[str, Any]:
    """The run's counts and speed: its MLflow metrics, and the same-named fields of its result message."""
    return {key: getattr(result, key) for key in DATASET_METRICS}


def generate_dataset_response(result: writer.SynthesisResult, root: Path, run_id: str) -> pb.GenerateDatasetResult:
    return pb.GenerateDatasetResult(
        **generate_dataset_metrics(result),
        output_uri=str(root),
        manifest_uri=str(root / writer.MANIFEST),
        mlflow_run_id=run_id,
        batch_size=result.batch_size,
    )


def generated_image(job: Job, image: Image.Image) -> pb.GeneratedImage:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return pb.GeneratedImage(image=common_pb2.Image(data=buf.getvalue(), mime="image/png"), job=job_record(job))


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


def list_tricks_response(max_images_per_class: int, model: str) -> pb.ListTricksResponse:
    """The planner's tricks, domains and templates, the sampler's choices and defaults, and the service's caps."""
    tricks = []
    for info in planner.list_tricks():
        defaults = struct_pb2.Struct()
        defaults.update(json.loads(json.dumps(info.defaults)))  # tuples to lists, all values JSON
        kind = pb.TrickKind.ValueType(TRICK_KIND.value(info.kind))
        tricks.append(pb.TrickInfo(name=info.name, kind=kind, description=info.description, defaults=defaults))
    lo, hi = planner.DEFAULT_GUIDANCE_RANGE
    return pb.ListTricksResponse(
        tricks=tricks,
        default_domains=list(planner.DEFAULT_DOMAINS),
        domain_sets={name: pb.DomainList(domains=list(d)) for name, d in planner.DOMAIN_SETS.items()},
        templates=dict(planner.TEMPLATES),
        image_templates=dict(planner.IMAGE_TEMPLATES),
        schedulers=list(SCHEDULERS),
        downsamplers=list(DOWNSAMPLERS),
        default_steps=GENERATION_DEFAULTS["steps"],
        default_scheduler=GENERATION_DEFAULTS["scheduler"],
        default_batch_size=writer.DEFAULT_BATCH_SIZE,
        default_guidance_scale=planner.DEFAULT_GUIDANCE,
        default_guidance_range=pb.GuidanceRange(lo=lo, hi=hi),
        max_images_per_class=max_images_per_class,
        max_preview_images=MAX_PREVIEW_IMAGES,
        model=model,
    )


def _zero_default(value: int, field: str, cls: Any, name: str | None = None) -> int | None:
    """A proto3 integer whose 0 means the default: None for 0, else ``value`` within the bounds that the core
    config ``cls`` declares for ``name`` (default: the request field's own name)."""
    bounds = bounds_of(cls)[name or field]
    if value and bounds.fault(value) is not None:
        raise InvalidArgument(f"{field} must be in [0, {bounds.le:g}] (0 means the default), got {value}")
    return value or None


def _generation(settings: pb.GenerationSettings, resolution: int) -> GenerationConfig:
    values: dict[str, Any] = {
        "steps": _zero_default(settings.steps, "steps", GenerationConfig),
        "native_resolution": _zero_default(settings.native_resolution, "native_resolution", GenerationConfig),
        "size": _zero_default(resolution, "resolution", GenerationConfig, "size"),
        "scheduler": settings.scheduler,
        "downsample": settings.downsample,
    }
    return GenerationConfig(**{key: value for key, value in values.items() if value})  # unset: the default


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


def _params(dataset: DatasetJob, parts: SDComponents, profile: str) -> dict[str, Any]:
    request, shard, gen = dataset.request, dataset.shard, dataset.request.generation
    return {
        "profile": profile,
        "model": parts.ref,
        "output_uri": str(dataset.root),
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
        "batch_size": dataset.batch_size or "directory default",
    }
