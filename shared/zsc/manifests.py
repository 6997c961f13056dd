"""The synthetic dataset's on-disk format, shared by the synthesis writer and its clients: ``request.json`` (the
header: format, fingerprint, model, resolutions, batch grid and the request), ``manifest.jsonl`` (one record per
image present, in plan order) and the chunk-grid shards a plan is cut into for several workers.

The synthesis core (``zsc_synthesis.core.writer``) plans and writes; a client needs these pieces without the
service: to cut a request into shards on the grid the directory was started with, and to read what was written.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.io import atomic_write_bytes

FORMAT = "zsc-synthesis/1"
MANIFEST = "manifest.jsonl"
REQUEST = "request.json"
DEFAULT_BATCH_SIZE = 8


class PlannedImage(Protocol):
    """One image of a plan, as the manifest records it (``zsc_synthesis.core.planner.Job``). Read-only members: a Job
    is a frozen dataclass, and its ``file`` a property."""

    @property
    def class_name(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def prompt(self) -> str: ...

    @property
    def negative_prompt(self) -> str: ...

    @property
    def domain(self) -> str: ...

    @property
    def trick(self) -> str: ...

    @property
    def guidance(self) -> float: ...

    @property
    def seed(self) -> int: ...

    @property
    def file(self) -> str: ...


J = TypeVar("J", bound=PlannedImage)


@dataclass(frozen=True)
class Shard:
    """A subset of the plan: ``classes`` (None = all) x indices [start, stop) (stop None = to the end)."""

    classes: tuple[str, ...] | None = None
    start: int = 0
    stop: int | None = None

    def select(self, plan: Sequence[J]) -> list[J]:
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise InvalidArgument(f"shard index range [{self.start}, {self.stop}) is empty or negative")
        names = {j.class_name for j in plan}
        if self.classes is not None:
            unknown = sorted(set(self.classes) - names)
            if unknown:
                raise InvalidArgument(f"shard names classes not in the request: {unknown}")
        wanted = names if self.classes is None else set(self.classes)
        stop = math.inf if self.stop is None else self.stop
        return [j for j in plan if j.class_name in wanted and self.start <= j.index < stop]


def split_shards(
    class_names: Sequence[str], images_per_class: int, replicas: int, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[Shard]:
    """Shards for at most ``replicas`` workers, cut on the chunk grid so no chunk is done twice: index ranges over all
    classes, and, when a class has fewer chunks than there are replicas, groups of classes as well."""
    if replicas <= 0:
        raise InvalidArgument(f"replicas must be positive, got {replicas}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InvalidArgument(f"batch size must be a positive integer, got {batch_size!r}")
    n_chunks = math.ceil(images_per_class / batch_size)
    parts = min(n_chunks, replicas)
    bounds = [round(r * n_chunks / parts) for r in range(parts + 1)]
    n = images_per_class
    ranges = [(lo * batch_size, min(hi * batch_size, n)) for lo, hi in itertools.pairwise(bounds)]
    groups = min(len(class_names), replicas // parts)
    if groups <= 1:
        return [Shard(None, lo, hi) for lo, hi in ranges]
    names = list(class_names)
    cuts = [round(g * len(names) / groups) for g in range(groups + 1)]
    return [Shard(tuple(names[a:b]), lo, hi) for a, b in itertools.pairwise(cuts) for lo, hi in ranges]


def manifest_record(job: PlannedImage, header: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of one image."""
    generation = header["request"]["generation"]
    return {
        "class": job.class_name,
        "index": job.index,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "domain": job.domain,
        "trick": job.trick,
        "guidance": job.guidance,
        "seed": job.seed,
        "steps": generation["steps"],
        "scheduler": generation["scheduler"],
        "model": header["model"],
        "size": header["size"],
        "native_resolution": header["native_resolution"],
        "file": job.file,
    }


def write_manifest(out_dir: str | os.PathLike[str], plan: Sequence[PlannedImage], header: dict[str, Any]) -> int:
    """Rebuild ``manifest.jsonl`` from the plan and the files present, in plan order; returns its line count."""
    root = Path(out_dir)
    lines = [
        json.dumps(manifest_record(job, header), ensure_ascii=False) + "\n"
        for job in plan
        if (root / job.file).is_file()
    ]
    atomic_write_bytes(root / MANIFEST, "".join(lines).encode("utf-8"))
    return len(lines)


def read_manifest(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(out_dir) / MANIFEST
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_header(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The directory's ``request.json``: format, fingerprint, model, resolutions, batch grid and the request."""
    path = Path(out_dir) / REQUEST
    if not path.is_file():
        raise FailedPrecondition(f"{out_dir} is not a zsc synthesis directory: no {REQUEST}")
    return json.loads(path.read_text(encoding="utf-8"))
