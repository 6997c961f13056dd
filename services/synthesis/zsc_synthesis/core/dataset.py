"""One dataset job of the synthesis service, as plain values: what GenerateDataset checks before it starts, the
generation itself with an images/s progress, and the contact sheets a reviewer looks at first.

The writer (``core/writer``) holds the dataset format; this module is the service's use of it, with no gRPC or
MLflow in it: the servicer logs what these functions return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from zsc.config import check_config, setting
from zsc.models.diffusion import SDComponents
from zsc_synthesis.core import writer
from zsc_synthesis.core.generator import StopFn
from zsc_synthesis.core.planner import MAX_IMAGES_PER_CLASS, Job

MAX_BATCH_SIZE = 256
SHEET_PER_CLASS = 8
SHEET_ROWS = 32  # classes per contact sheet
SHEET_MAX_CLASSES = 256  # sheets cover the first classes only; more would bloat the run
SHEET_CELL = 128  # pixels a side at most per cell
SHEET_FOLDER = "contact_sheets"  # where several sheets go; a single one is named contact_sheet.png
ProgressFn = Callable[..., None]  # progress(done, total, images_per_second=...)


@dataclass(frozen=True)
class DatasetJob:
    """A request into a directory: all of it or a shard, on a chunk grid of ``batch_size`` (None: the directory's
    stored grid, 8 for a new one)."""

    request: writer.SynthesisRequest
    root: Path
    shard: writer.Shard | None = None
    batch_size: int | None = setting(None, ge=1, le=MAX_BATCH_SIZE)
    max_images_per_class: int = MAX_IMAGES_PER_CLASS

    def __post_init__(self) -> None:
        check_config(self)

    def preflight(self, parts: SDComponents) -> list[Job]:
        """The jobs this run would do, after every check the writer makes before its first write (nothing written)."""
        return writer.preflight(self.request, parts, self.root, **self._part())

    def _part(self) -> dict[str, Any]:
        """Which part of the plan the writer does, on which grid: the same for its checks and its run."""
        return {"shard": self.shard, "batch_size": self.batch_size, "max_images_per_class": self.max_images_per_class}

    def classes(self) -> list[str]:
        """The request's class names that the shard covers, in request order."""
        names = [c.name for c in self.request.classes]
        if self.shard is None or self.shard.classes is None:
            return names
        wanted = set(self.shard.classes)
        return [n for n in names if n in wanted]


def generate_dataset(
    job: DatasetJob, parts: SDComponents, progress: ProgressFn, should_stop: StopFn
) -> writer.SynthesisResult:
    """Write the job's images (skipping those already there). A cancel returns with ``cancelled`` set, after the
    manifest lists what was written, so the caller can still report the counts."""
    return writer.synthesize(
        job.request, parts, job.root, on_progress=_with_rate(progress), should_stop=should_stop, **job._part()
    )


def contact_sheets(job: DatasetJob) -> Iterator[tuple[str | None, str, Image.Image]]:
    """(folder or None, file name, sheet): one grid, a row of its first images per class, per SHEET_ROWS classes of
    the first SHEET_MAX_CLASSES, rendered one at a time."""
    classes = job.classes()[:SHEET_MAX_CLASSES]
    groups = [classes[i : i + SHEET_ROWS] for i in range(0, len(classes), SHEET_ROWS)]
    for i, group in enumerate(groups):
        sheet = writer.contact_sheet(job.root, SHEET_PER_CLASS, classes=group, cell=SHEET_CELL)
        if len(groups) == 1:
            yield None, "contact_sheet.png", sheet
        else:
            yield SHEET_FOLDER, f"contact_sheet_{i:03d}.png", sheet


def _with_rate(progress: ProgressFn) -> writer.ProgressFn:
    """The writer's progress with the images/s of this run (the images already present do not count)."""
    start: dict[str, float] = {}

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if not start:
            start.update(done=done, time=now)
        elapsed = now - start["time"]
        rate = (done - start["done"]) / elapsed if elapsed > 0 else 0.0
        progress(done, total, images_per_second=rate)

    return report
