"""Synthetic dataset output: an ImageFolder ``<root>/<class>/<index:05d>.png`` plus ``manifest.jsonl``, atomic and
resumable, and ``synthesize``, the entry point a servicer calls.

Consistency design. Every manifest record is a pure function of the request and the image's (class, index), so
the manifest is *derived data*: the PNG files are the only progress state. Each PNG is written to a temp file in
its class folder and ``os.replace``-d into place, so a file either exists whole or not at all. The manifest is
rebuilt from (plan ∩ existing files), in plan order, and replaced atomically: at the start and end of every run
(finished, cancelled or failed) and at geometrically spaced checkpoints in between. At rest it always lists
exactly a subset of the files with whole lines; a kill between an image write and a manifest rewrite loses nothing,
because the next run rebuilds it from the files.

Byte-identical resumes. Floating-point kernels give slightly different results for different batch shapes, which
can flip 8-bit pixel values, so batches are not formed from whatever is pending: the plan is cut into a fixed grid
of chunks, (class, index // batch_size), and a chunk is always generated whole. A resume, a cancelled-then-resumed
run and any sharding therefore run exactly the batches an uninterrupted run does, and write the same bytes; a chunk
that is only partly missing (a hard kill mid-chunk, a shard edge off the grid) is regenerated whole and only its
missing files are written. The grid size is stored in ``request.json`` and reused by later runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

from PIL import Image, ImageDraw, ImageFont

from zsc import manifests
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument
from zsc.io import atomic_open, open_temp
from zsc.manifests import (  # the dataset format, shared with clients; re-exported for the service's callers
    DEFAULT_BATCH_SIZE,
    FORMAT,
    MANIFEST,
    REQUEST,
    Shard,
    read_header,
    read_manifest,
)
from zsc.models.diffusion import SDComponents
from zsc_synthesis.core.generator import GenerationConfig, ImageGenerator, StopFn
from zsc_synthesis.core.planner import (
    MAX_IMAGES_PER_CLASS,
    ClassSpec,
    Job,
    TrickConfig,
    TrickKnobs,
    TrickMix,
    TrickSpec,
    make_plan,
    normalize_classes,
    parse_tricks,
    resolve_mix,
)

CHECKPOINT_MIN = 256  # images between manifest rewrites at least; the gap grows with the dataset (amortized O(N))
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthesisRequest:
    """Everything that determines the dataset's bytes, apart from the model (recorded beside it)."""

    classes: tuple[ClassSpec, ...]
    images_per_class: int
    tricks: TrickMix
    seed: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", normalize_classes(self.classes))
        object.__setattr__(self, "tricks", resolve_mix(self.tricks))
        if isinstance(self.images_per_class, bool) or not isinstance(self.images_per_class, int):
            raise InvalidArgument(f"images per class must be an integer, got {self.images_per_class!r}")
        if self.images_per_class <= 0:
            raise InvalidArgument(f"images per class must be positive, got {self.images_per_class}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidArgument(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def create(
        cls,
        classes: Sequence[str | ClassSpec],
        images_per_class: int,
        tricks: TrickSpec = "class_prompt",
        seed: int = 0,
        *,
        descriptions: dict[str, str] | None = None,
        generation: GenerationConfig | None = None,
        **knobs: Unpack[TrickKnobs],
    ) -> SynthesisRequest:
        """A request from flat fields, the shape an RPC message has; knobs as in ``parse_tricks``."""
        descriptions = dict(descriptions or {})
        specs = [c if isinstance(c, ClassSpec) else ClassSpec(c, descriptions.pop(c, "")) for c in classes]
        if descriptions:
            raise InvalidArgument(f"descriptions given for unknown classes: {sorted(descriptions)}")
        mix = parse_tricks(tricks, **knobs)
        return cls(tuple(specs), images_per_class, mix, seed, generation or GenerationConfig())

    def plan(self, max_images_per_class: int = MAX_IMAGES_PER_CLASS) -> list[Job]:
        return make_plan(
            self.classes, self.images_per_class, self.tricks, self.seed, max_images_per_class=max_images_per_class
        )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthesisRequest:
        return cls(
            classes=tuple(ClassSpec(**c) for c in data["classes"]),
            images_per_class=data["images_per_class"],
            tricks=tuple((TrickConfig(**t), s) for t, s in data["tricks"]),
            seed=data["seed"],
            generation=GenerationConfig(**data["generation"]),
        )


@dataclass(frozen=True)
class SynthesisResult:
    """What one ``synthesize`` call did. ``computed`` counts images run through the UNet (whole chunks)."""

    out_dir: str
    total: int
    generated: int
    skipped: int
    computed: int
    cancelled: bool
    seconds: float
    batch_size: int

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def done(self) -> int:
        return self.generated + self.skipped


def synthesize(
    request: SynthesisRequest,
    parts: SDComponents,
    out_dir: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    batch_size: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    max_images_per_class: int = MAX_IMAGES_PER_CLASS,
) -> SynthesisResult:
    """Generate the request's images (or a shard of them) into ``out_dir``, skipping those already there.

    ``batch_size`` None reuses the directory's stored grid (default 8 for a new one); a different explicit value on
    an existing directory is refused, since it would change the bytes. A different request into the same directory
    raises ``FailedPrecondition``. Cancelling through ``should_stop`` returns with ``cancelled=True``; the images
    already written stay and the manifest lists them.
    """
    root = Path(out_dir)
    plan, jobs, generator, header = _prepare(request, parts, shard, batch_size, max_images_per_class)
    grid = _claim(root, header, batch_size)

    _remove_stale_temps(root, jobs)
    pending = [j for j in jobs if not (root / j.file).is_file()]
    skipped = len(jobs) - len(pending)
    chunks = _chunks(plan, grid)
    todo = {j.file for j in pending}
    keys = list(dict.fromkeys((j.class_name, j.index // grid) for j in pending))

    generated = computed = 0
    cancelled = False
    listed = write_manifest(root, plan, header)
    since_checkpoint = 0
    if on_progress is not None:
        on_progress(skipped, len(jobs))
    start = time.perf_counter()
    try:
        for key in keys:
            if should_stop is not None and should_stop():
                cancelled = True
                break
            chunk = chunks[key]
            images = generator.generate(chunk, should_stop)
            computed += len(chunk)
            for job, image in zip(chunk, images, strict=True):
                if job.file in todo:
                    write_png(root / job.file, image)
                    generated += 1
                    since_checkpoint += 1
            if on_progress is not None:
                on_progress(skipped + generated, len(jobs))
            if since_checkpoint >= max(CHECKPOINT_MIN, listed // 4):
                listed = write_manifest(root, plan, header)
                since_checkpoint = 0
    except Cancelled:
        cancelled = True
    finally:
        seconds = time.perf_counter() - start
        write_manifest(root, plan, header)
    return SynthesisResult(str(root), len(jobs), generated, skipped, computed, cancelled, seconds, grid)


def preflight(
    request: SynthesisRequest,
    parts: SDComponents,
    out_dir: str | os.PathLike[str],
    *,
    shard: Shard | None = None,
    batch_size: int | None = None,
    max_images_per_class: int = MAX_IMAGES_PER_CLASS,
) -> list[Job]:
    """Every check ``synthesize`` makes before its first write, without writing anything; returns the jobs it would
    run. A service calls it to refuse a bad request at once rather than fail the operation later."""
    _, jobs, _, header = _prepare(request, parts, shard, batch_size, max_images_per_class)
    _check_dir(Path(out_dir), header, batch_size)
    return jobs


def split_shards(request: SynthesisRequest, replicas: int, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Shard]:
    """``manifests.split_shards`` of the request's classes and count."""
    return manifests.split_shards([c.name for c in request.classes], request.images_per_class, replicas, batch_size)


def write_manifest(
    out_dir: str | os.PathLike[str], plan: Sequence[Job] | None = None, header: dict[str, Any] | None = None
) -> int:
    """Rebuild ``manifest.jsonl`` from the plan and the files present, in plan order; returns its line count.

    With no plan or header they come from the directory's ``request.json``, so any tool can repair a manifest,
    e.g. after shards written by several replicas into one directory.
    """
    root = Path(out_dir)
    if header is None:
        header = read_header(root)
    if plan is None:
        plan = SynthesisRequest.from_dict(header["request"]).plan(header["request"]["images_per_class"])
    return manifests.write_manifest(root, plan, header)


def request_fingerprint(request: SynthesisRequest, model: str) -> str:
    """sha256 over the canonical JSON of the request and the model reference."""
    canonical = json.dumps(
        {"format": FORMAT, "model": model, "request": request.to_dict()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_png(path: Path, image: Image.Image) -> None:
    """Write a PNG atomically. PIL writes no timestamp chunk, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        image.save(fh, format="PNG")


def contact_sheet(
    root: str | os.PathLike[str],
    per_class: int = 8,
    *,
    classes: Sequence[str] | None = None,
    cell: int | None = None,
) -> Image.Image:
    """A grid with one row per class (name on the left) of its first ``per_class`` images, in manifest order.

    ``classes`` picks the rows (default: all); ``cell`` resizes the cells to at most that many pixels a side, so a
    sheet of large images stays small."""
    root = Path(root)
    files: dict[str, list[str]] = {}
    if (root / MANIFEST).is_file():
        for record in read_manifest(root):
            files.setdefault(record["class"], []).append(record["file"])
    else:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files[class_dir.name] = [f"{class_dir.name}/{p.name}" for p in sorted(class_dir.glob("*.png"))]
    wanted = files if classes is None else {name: files.get(name, []) for name in classes}
    rows = {name: paths[:per_class] for name, paths in wanted.items() if paths}
    if not rows:
        raise FailedPrecondition(f"no images under {root}")
    first = next(iter(rows.values()))[0]
    with Image.open(root / first) as im:
        cell_w, cell_h = im.size
    if cell is not None and max(cell_w, cell_h) > cell:
        scale = cell / max(cell_w, cell_h)
        cell_w, cell_h = max(1, round(cell_w * scale)), max(1, round(cell_h * scale))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(name, font=font) for name in rows)) + 8
    gap = 2
    width = label_w + per_class * (cell_w + gap)
    sheet = Image.new("RGB", (width, len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, paths) in enumerate(rows.items()):
        y = r * (cell_h + gap)
        draw.text((4, y + cell_h // 2), name, fill="black", font=font, anchor="lm")
        for c, rel in enumerate(paths):
            with Image.open(root / rel) as im:
                sheet.paste(im.convert("RGB").resize((cell_w, cell_h)), (label_w + c * (cell_w + gap), y))
    return sheet


def _header(request: SynthesisRequest, generator: ImageGenerator, batch_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "fingerprint": request_fingerprint(request, generator.model),
        "model": generator.model,
        "native_resolution": generator.native_resolution,
        "size": generator.size,
        "batch_size": batch_size,
        "request": request.to_dict(),
    }


def _prepare(
    request: SynthesisRequest,
    parts: SDComponents,
    shard: Shard | None,
    batch_size: int | None,
    max_images_per_class: int,
) -> tuple[list[Job], list[Job], ImageGenerator, dict[str, Any]]:
    """The plan, this run's jobs, the generator and the directory header, all validated."""
    plan = request.plan(max_images_per_class)
    jobs = (shard or Shard()).select(plan)
    generator = ImageGenerator(parts, request.generation)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise InvalidArgument(f"batch size must be a positive integer, got {batch_size!r}")
    return plan, jobs, generator, _header(request, generator, batch_size or DEFAULT_BATCH_SIZE)


def _check_dir(root: Path, header: dict[str, Any], batch_size: int | None) -> int | None:
    """Read-only: raise unless ``root`` can take this request; returns its stored grid, or None for a new dataset."""
    if root.exists() and not root.is_dir():
        raise FailedPrecondition(f"{root} exists and is not a directory")
    # One listing decides: a replica sharding the same dataset may write the header between two separate looks.
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []
    if REQUEST not in names:
        if names:
            raise FailedPrecondition(
                f"{root} is not empty and holds no {REQUEST} (found {names[:3]}); use an empty dir"
            )
        return None
    existing = read_header(root)
    if existing.get("format") != FORMAT:
        raise FailedPrecondition(f"{root} holds a dataset of format {existing.get('format')!r}, not {FORMAT!r}")
    if existing.get("fingerprint") != header["fingerprint"]:
        before = existing.get("request") or {}
        differ = [k for k in header["request"] if before.get(k) != header["request"][k]]
        if existing.get("model") != header["model"]:
            differ.insert(0, "model")
        raise FailedPrecondition(
            f"{root} holds a different synthesis request (differs in {', '.join(differ) or 'fingerprint'}); "
            "rerun the same request to resume, or use another output dir"
        )
    # A resumed dataset may lack classes not generated yet, but a folder of no requested class (a typo'd or leftover
    # `dgo/`) would become an extra class for whatever trains on the directory.
    classes = {c.get("name") for c in header["request"]["classes"]}
    extra = [n for n in names if n not in classes and (root / n).is_dir()]
    if extra:
        raise InvalidArgument(
            f"{root} holds folders of no class in this request: {extra[:10]}; remove them or use another output dir"
        )
    grid = int(existing["batch_size"])
    if batch_size is not None and batch_size != grid:
        raise FailedPrecondition(
            f"{root} was generated with batch size {grid}; batch shape changes the floating-point results, so "
            f"resume with batch size {grid} (or leave it unset) instead of {batch_size}"
        )
    return grid


def _claim(root: Path, header: dict[str, Any], batch_size: int | None) -> int:
    """Create or check ``request.json``; returns the chunk grid size that this directory uses."""
    if _check_dir(root, header, batch_size) is None:
        root.mkdir(parents=True, exist_ok=True)
        _create_exclusive(root / REQUEST, _header_bytes(header))
    # checked again: a concurrent replica may have published its request.json first
    grid = _check_dir(root, header, batch_size)
    assert grid is not None
    header["batch_size"] = grid
    return grid


def _header_bytes(header: dict[str, Any]) -> bytes:
    return (json.dumps(header, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _create_exclusive(path: Path, data: bytes) -> None:
    """Publish a whole file only if none exists, so concurrent replicas agree on one request.json."""
    fd, tmp = open_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: last writer wins, the contents are equal anyway
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_stale_temps(root: Path, jobs: Sequence[Job]) -> None:
    """Delete temp files a killed run left for this run's images (never another replica's: shards are disjoint)."""
    mine: dict[str, set[str]] = {}
    for job in jobs:
        mine.setdefault(job.class_name, set()).add(Path(job.file).name)
    for name, targets in mine.items():
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        for entry in os.scandir(class_dir):
            # temp names are ".<target>.<random>.tmp" (zsc.io.open_temp)
            if (
                entry.name.startswith(".")
                and entry.name.endswith(".tmp")
                and entry.name[1:].rsplit(".", 2)[0] in targets
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _chunks(plan: Sequence[Job], grid: int) -> dict[tuple[str, int], list[Job]]:
    chunks: dict[tuple[str, int], list[Job]] = {}
    for job in plan:
        chunks.setdefault((job.class_name, job.index // grid), []).append(job)
    return chunks
