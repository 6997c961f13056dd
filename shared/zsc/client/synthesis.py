"""Client of the Synthesis service: synthetic ImageFolders (on one or several replicas), preview images, tricks.

Several replicas share the plan cut into ``fanout.SHARDS_PER_REPLICA`` shards per replica on the chunk grid
(``zsc.manifests.split_shards``): a free replica takes the next shard, a lost replica's shard goes to the others, and
all write into the same directory, so the result is byte for byte what one replica writes. Each replica rewrites the
manifest as it goes, and the last rewrite may predate another replica's last image, so a sharded run ends with one
unsharded pass on a replica: every image exists, so it only rebuilds the manifest from the files, where the data
lives (the directory need not be visible to the client).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from zsc import manifests
from zsc.client import fanout
from zsc.client._messages import build, enum, from_message, job_result, local_uri
from zsc.client.operations import Progress, follow
from zsc.runtime import client
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc.synthesis.v1 import synthesis_pb2_grpc as pb_grpc

PathLike = str | os.PathLike[str]
SERVICE = "synthesis"
TRICK_KINDS = enum(pb.TrickKind, field="kind")


@dataclass
class ClassSpec:
    """A class and the text its prompts use for it (empty: the name), e.g. crane -> "crane, a bird"."""

    name: str
    description: str = ""


@dataclass
class TrickShare:
    tricks: str
    share: float


@dataclass
class GuidanceRange:
    lo: float
    hi: float


@dataclass
class TrickSpec:
    """The bag of tricks (synthesis.proto TrickSpec): ``tricks`` or an explicit ``merge`` with shares, and knobs."""

    tricks: str = ""
    merge: list[TrickShare] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    domain_set: str = ""
    template: str = ""
    guidance_scale: float | None = None
    guidance_range: GuidanceRange | None = None
    image_template: str = ""


@dataclass
class _Counts:
    """The fields a run's result and a shard's result share (GenerateDatasetResult's)."""

    total: int
    generated: int
    skipped: int
    computed: int
    seconds: float
    output_uri: str
    manifest_uri: str


@dataclass
class DatasetResult(_Counts):
    """What a (possibly sharded) run did: counts added over its shards, ``seconds`` the longest shard's own time."""

    mlflow_run_ids: list[str]
    batch_size: int
    shards: fanout.FanOut | None = None  # how a sharded run went (None on one replica)


@dataclass
class _Result(_Counts):
    mlflow_run_id: str
    batch_size: int


def _plan(
    classes: Sequence[ClassSpec | str],
    images_per_class: int,
    tricks: TrickSpec | None,
    resolution: int,
    seed: int,
    generation: dict[str, Any] | None,
    batch_size: int,
) -> dict[str, Any]:
    """The plan fields GenerateDataset and GenerateImages share (a bare name is a ClassSpec; no tricks:
    class_prompt)."""
    specs = [c if isinstance(c, ClassSpec) else ClassSpec(c) for c in classes]
    return {
        "classes": [asdict(c) for c in specs],
        "images_per_class": images_per_class,
        "tricks": tricks or TrickSpec(tricks="class_prompt"),
        "resolution": resolution,
        "seed": seed,
        "generation": generation,
        "batch_size": batch_size,
    }


def _shard(shard: manifests.Shard) -> pb.Shard:
    return pb.Shard(classes=shard.classes or [], start=shard.start, stop=shard.stop or 0)


def dataset_request(
    classes: Sequence[ClassSpec | str],
    images_per_class: int,
    out: PathLike,
    *,
    tricks: TrickSpec | None = None,
    resolution: int = 0,
    seed: int = 0,
    generation: dict[str, Any] | None = None,
    batch_size: int = 0,
    experiment: str = "",
    shard: manifests.Shard | None = None,
) -> pb.GenerateDatasetRequest:
    """The GenerateDataset message of these values (tests and tools that speak the wire use it). ``generation``:
    GenerationSettings fields (steps, scheduler, native_resolution, negative_prompt, downsample)."""
    plan = _plan(classes, images_per_class, tricks, resolution, seed, generation, batch_size)
    request = build(pb.GenerateDatasetRequest, **plan, output_uri=local_uri(out), experiment=experiment)
    if shard is not None:
        request.shard.CopyFrom(_shard(shard))
    return request


def plan_shards(
    classes: Sequence[ClassSpec | str], images_per_class: int, out: PathLike, workers: int, batch_size: int = 0
) -> list[manifests.Shard]:
    """The plan cut for ``workers`` on its chunk grid: the given batch size, else the one ``out`` was started with,
    else the default. The cut depends only on the class names and the count."""
    names = [c.name if isinstance(c, ClassSpec) else c for c in classes]
    grid = batch_size or _stored_batch_size(Path(out)) or manifests.DEFAULT_BATCH_SIZE
    return manifests.split_shards(names, images_per_class, workers, grid)


def _stored_batch_size(out: Path) -> int:
    """The batch grid an existing output directory was started with (0 when new or not visible here)."""
    from zsc.errors import FailedPrecondition

    try:
        return int(manifests.read_header(out)["batch_size"])
    except (FailedPrecondition, OSError, ValueError, KeyError, TypeError):
        return 0  # new, unreadable or not ours: the service says what is wrong, if anything


def generate_dataset(
    target: grpc.Channel | Sequence[client.Replica],
    classes: Sequence[ClassSpec | str],
    images_per_class: int,
    out: PathLike,
    *,
    progress: Progress | None = None,
    profile: str | None = None,
    on_start: fanout.OnStart | None = None,
    **options: Any,
) -> DatasetResult:
    """Write a synthetic ImageFolder + manifest.jsonl into ``out`` on one channel, or sharded over several replicas
    (``profile`` and ``on_start`` apply there). ``options``: ``dataset_request``'s (tricks, resolution, seed,
    generation, batch_size, experiment, shard)."""
    request = dataset_request(classes, images_per_class, out, **options)
    if isinstance(target, grpc.Channel):
        op = pb_grpc.SynthesisStub(target).GenerateDataset(request)
        return _merge([job_result(target, op, progress, _Result, pb.GenerateDatasetResult)])
    replicas = list(target)
    parts = []
    shards = plan_shards(classes, images_per_class, out, fanout.SHARDS_PER_REPLICA * len(replicas), request.batch_size)
    for shard in shards:
        part = pb.GenerateDatasetRequest()
        part.CopyFrom(request)
        part.shard.CopyFrom(_shard(shard))
        parts.append(part)

    def start(channel: grpc.Channel, part: pb.GenerateDatasetRequest) -> Any:
        return pb_grpc.SynthesisStub(channel).GenerateDataset(part)

    run = fanout.run_shards(SERVICE, replicas, parts, start, profile=profile, on_start=on_start, progress=progress)
    merged = _merge([from_message(_Result, client.unpack(op, pb.GenerateDatasetResult)) for op in run.operations])
    merged.shards = run
    # the manifest pass: every image exists, so the replica only rebuilds the manifest from the files
    replica = next(r for r in reversed(replicas) if r.address in run.ran_on and r.address not in run.lost)
    channel = client.connect(
        replica.address, profile=client.profile_name(profile) if profile else None, name=replica.name
    )
    try:
        follow(channel, pb_grpc.SynthesisStub(channel).GenerateDataset(request))
    finally:
        channel.close()
    return merged


def _merge(results: list[_Result]) -> DatasetResult:
    return DatasetResult(
        total=sum(r.total for r in results),
        generated=sum(r.generated for r in results),
        skipped=sum(r.skipped for r in results),
        computed=sum(r.computed for r in results),
        seconds=max((r.seconds for r in results), default=0.0),
        output_uri=results[0].output_uri,
        manifest_uri=results[0].manifest_uri,
        mlflow_run_ids=[r.mlflow_run_id for r in results],
        batch_size=results[0].batch_size,
    )


@dataclass
class JobRecord:
    class_name: str
    index: int
    prompt: str
    negative_prompt: str
    domain: str
    trick: str
    guidance: float
    seed: int
    file: str


@dataclass
class GeneratedImage:
    data: bytes  # encoded PNG
    mime: str
    job: JobRecord


def generate_images(
    channel: grpc.Channel,
    classes: Sequence[ClassSpec | str],
    images_per_class: int,
    *,
    tricks: TrickSpec | None = None,
    resolution: int = 0,
    seed: int = 0,
    generation: dict[str, Any] | None = None,
    batch_size: int = 0,
) -> Iterator[GeneratedImage]:
    """A few preview images streamed back as they are made, each with its plan record (nothing is written)."""
    plan = _plan(classes, images_per_class, tricks, resolution, seed, generation, batch_size)
    request = build(pb.GenerateImagesRequest, **plan)
    for item in pb_grpc.SynthesisStub(channel).GenerateImages(request):
        yield GeneratedImage(item.image.data, item.image.mime, from_message(JobRecord, item.job))


@dataclass
class TrickInfo:
    name: str
    kind: str
    description: str
    defaults: dict[str, Any]


@dataclass
class DomainList:
    domains: list[str]


@dataclass
class Tricks:
    """What the service offers: tricks, domains, templates, samplers and their defaults and limits."""

    tricks: list[TrickInfo]
    default_domains: list[str]
    domain_sets: dict[str, DomainList]
    templates: dict[str, str]
    schedulers: list[str]
    downsamplers: list[str]
    default_steps: int
    default_scheduler: str
    default_batch_size: int
    default_guidance_scale: float
    default_guidance_range: GuidanceRange | None
    max_images_per_class: int
    max_preview_images: int
    model: str
    image_templates: dict[str, str]


def list_tricks(channel: grpc.Channel) -> Tricks:
    return from_message(Tricks, pb_grpc.SynthesisStub(channel).ListTricks(pb.ListTricksRequest()))
