"""Feature extraction core: an ImageFolder → a zsc feature set (image features, labels, class names, class text).

Batched: images go through the image model ``batch_size`` at a time; the class prompts go through the text model
once. Cached per image: every image file is hashed (sha256 of its bytes) and its feature is stored under that hash
in a cache directory of the image model's id (weights hash + dtype + transform, :class:`FeatureCache`). Per image,
not per dataset, because the same images recur in different selections: ``--limit`` subsets, the reduced CI run
and the full benchmark, a train folder and its class subsets. A whole-file cache keyed by the dataset's hash would
miss on each of them; the per-image one computes every image once per model. Hashing reads the bytes anyway, so a
renamed or moved dataset still hits, and a changed image misses instead of returning a stale feature.

Pure PyTorch and PIL: no gRPC, MLflow or progress-bar imports (callers pass ``on_progress``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from zsc.data import ImageFolder, load_image_file
from zsc.errors import Cancelled
from zsc.features import Alignment, FeatureSet
from zsc.models.clip import DEFAULT_TEMPLATE, ClipBundle, encode_texts
from zsc.models.lite import ImageEncoder, TextEncoder

__all__ = [
    "ExtractionResult",
    "Extractors",
    "FeatureCache",
    "clip_extractors",
    "default_cache_dir",
    "extract_features",
    "hash_files",
    "lite_extractors",
    "weights_fingerprint",
    "write_features",
]

log = logging.getLogger(__name__)
_CACHE_FORMAT = "zsc.featurecache/1"


@dataclass
class Extractors:
    """The two models of an extraction, behind plain callables so CLIP and the lite encoders look alike.

    ``encode_images(images) -> [N, dim]`` and ``encode_texts(texts) -> [C, text_dim]``, both float32 on the CPU.
    ``image_model_id`` must change whenever the image features would (it keys the cache).
    """

    encode_images: Callable[[list[Image.Image]], torch.Tensor]
    encode_texts: Callable[[list[str]], torch.Tensor]
    image_ref: str
    text_ref: str
    image_model_id: str
    dim: int
    text_dim: int
    aligned: bool  # image and text features share one space (CLIP)
    normalized: bool  # image features are L2-normalized as written


def default_cache_dir() -> Path:
    """$ZSC_FEATURE_CACHE_DIR, else ~/.cache/zsc/features."""
    env = os.environ.get("ZSC_FEATURE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zsc" / "features"


class FeatureCache:
    """Features by image hash for one image model: ``<root>/<sha256(model id)[:32]>/shard-*.safetensors``.

    Each shard holds one batch: a ``features`` [B, D] tensor and, in its header, the B image hashes. Shards are
    written atomically and never modified, so concurrent writers (two jobs, two processes) cannot corrupt each
    other; an unreadable or foreign shard is skipped, never trusted. ``model.json`` records the full model id.
    """

    def __init__(self, root: Path, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self.dir = Path(root) / hashlib.sha256(model_id.encode()).hexdigest()[:32]
        self._index: dict[str, tuple[Path, int]] = {}
        self._shards: set[Path] = set()

    def _refresh(self) -> None:
        """Read the headers of shards not seen yet (cheap: no tensor data is read)."""
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            if path in self._shards:
                continue
            self._shards.add(path)
            try:
                with safe_open(os.fspath(path), framework="pt") as fh:
                    meta = fh.metadata() or {}
                    shape = fh.get_slice("features").get_shape()
                keys = json.loads(meta.get("keys", "[]"))
            except Exception as err:  # a foreign or damaged file is a cache miss, not a failure
                log.warning("skipping unreadable feature-cache shard %s: %s", path.name, type(err).__name__)
                continue
            if meta.get("format") != _CACHE_FORMAT or meta.get("model_id") != self.model_id:
                continue
            if list(shape) != [len(keys), self.dim]:
                continue
            for row, key in enumerate(keys):
                self._index.setdefault(key, (path, row))

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The cached features of those ``keys`` that have one."""
        self._refresh()
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for key in set(keys):
            if key in self._index:
                path, row = self._index[key]
                by_shard.setdefault(path, []).append((key, row))
        found: dict[str, torch.Tensor] = {}
        for path, rows in by_shard.items():
            try:
                with safe_open(os.fspath(path), framework="pt") as fh:
                    features = fh.get_tensor("features")
            except Exception as err:
                log.warning("skipping unreadable feature-cache shard %s: %s", path.name, type(err).__name__)
                continue
            for key, row in rows:
                found[key] = features[row]
        return found

    def put(self, keys: Sequence[str], features: torch.Tensor) -> None:
        """Store one batch as a new shard (atomic: temp file + rename in the same directory)."""
        if len(keys) != features.shape[0] or features.shape[1:] != (self.dim,):
            raise ValueError(f"cache batch mismatch: {len(keys)} keys for features {tuple(features.shape)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "model.json"
        if not info.exists():
            _atomic_text(info, json.dumps({"format": _CACHE_FORMAT, "model_id": self.model_id}, indent=2) + "\n")
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        meta = {"format": _CACHE_FORMAT, "model_id": self.model_id, "keys": json.dumps(list(keys))}
        try:
            save_file({"features": features.detach().float().cpu().contiguous()}, tmp, metadata=meta)
            os.replace(tmp, self.dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def hash_files(paths: Sequence[Path]) -> list[str]:
    """Hex sha256 of each file's bytes."""
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


@dataclass
class ExtractionResult:
    features: FeatureSet
    cache_hits: int
    computed: int
    dataset_sha256: str
    seconds: float


def _dataset_digest(dataset: ImageFolder, hashes: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for (path, _), h in sorted(zip(dataset.samples, hashes, strict=True), key=lambda s: str(s[0][0])):
        digest.update(f"{path.relative_to(dataset.root).as_posix()}\0{h}\n".encode())
    return digest.hexdigest()


def extract_features(
    dataset: ImageFolder,
    extractors: Extractors,
    *,
    class_names: Sequence[str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    metadata: dict[str, str] | None = None,
) -> ExtractionResult:
    """Image features of every sample, the class text features of ``template.format(name)``, as a FeatureSet.

    ``class_names`` (default: the dataset's classes) rename its labels in label order. Images are decoded with
    zsc.data's limits. ``on_progress(done, total)`` is called after the cache lookup and after every batch;
    ``should_stop()`` is polled between batches and raises :class:`Cancelled`.
    """
    start = time.perf_counter()
    names = list(class_names) if class_names is not None else list(dataset.classes)
    if len(names) != len(dataset.classes):
        raise ValueError(f"{len(names)} class names for {len(dataset.classes)} class folders")
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template[:80]!r} must contain exactly one '{{}}'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset.samples)
    paths = [p for p, _ in dataset.samples]
    hashes = hash_files(paths)
    found = cache.get(hashes) if cache is not None else {}
    # Identical files are encoded once; each missing hash is computed from its first path.
    todo: dict[str, Path] = {}
    for path, key in zip(paths, hashes, strict=True):
        if key not in found and key not in todo:
            todo[key] = path
    hits = sum(key in found for key in hashes)
    copies = Counter(hashes)  # progress counts samples, and identical files are several samples
    done = hits
    if on_progress is not None:
        on_progress(done, total)
    pending = list(todo.items())
    computed: dict[str, torch.Tensor] = {}
    for i in range(0, len(pending), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled(f"extraction cancelled after {done} of {total} images")
        chunk = pending[i : i + batch_size]
        images = [load_image_file(path) for _, path in chunk]
        features = extractors.encode_images(images).float().cpu()
        if features.shape != (len(chunk), extractors.dim):
            raise RuntimeError(f"image model returned {tuple(features.shape)} for {len(chunk)} images")
        keys = [key for key, _ in chunk]
        if cache is not None:
            cache.put(keys, features)
        computed.update(zip(keys, features, strict=True))
        done += sum(copies[key] for key in keys)
        if on_progress is not None:
            on_progress(done, total)
    rows = [found[key] if key in found else computed[key] for key in hashes]
    image_features = torch.stack(rows) if rows else torch.empty(0, extractors.dim)
    text_features = extractors.encode_texts([template.format(n) for n in names]).float().cpu()
    digest = _dataset_digest(dataset, hashes)
    meta = {
        "zsc.kind": "features",
        "image_encoder": extractors.image_ref,
        "image_model_id": extractors.image_model_id,
        "text_encoder": extractors.text_ref,
        "prompt_template": template,
        "aligned": json.dumps(extractors.aligned),
        "normalized": json.dumps(extractors.normalized),
        "dataset_sha256": digest,
        "class_folders": json.dumps(list(dataset.folders)),  # the folder behind each label, in label order
        **(metadata or {}),
    }
    labels = torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)
    result = FeatureSet(image_features.contiguous(), labels, names, text_features.contiguous(), meta)
    result.validate()
    return ExtractionResult(
        features=result,
        cache_hits=hits,
        computed=total - hits,
        dataset_sha256=digest,
        seconds=time.perf_counter() - start,
    )


def write_features(features: FeatureSet, out: Path, alignment: Alignment | None = None) -> None:
    """Save the feature set to ``out``, moved into an alignment's space first when one is given."""
    # DFZSL moves every image feature into FLPT's space; the cache keeps the encoder's own features.
    written = alignment.apply(features) if alignment is not None else features
    out.parent.mkdir(parents=True, exist_ok=True)
    written.save(out)


# --- the two kinds of extractors -------------------------------------------------------------------------------------
def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes and bytes): identifies seeded tiny weights too."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def clip_extractors(bundle: ClipBundle, fingerprint: str) -> Extractors:
    """CLIP's image and text towers: one aligned space, both sides L2-normalized (as CLIP zero-shot uses them)."""

    @torch.inference_mode()
    def encode_images(images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([bundle.preprocess(im) for im in images]).to(bundle.device, bundle.dtype)
        return bundle.model.encode_image(batch, normalize=True).float().cpu()

    transform = " ".join(str(bundle.preprocess).split())
    return Extractors(
        encode_images=encode_images,
        encode_texts=lambda texts: encode_texts(bundle.model, bundle.tokenizer, texts).cpu(),
        image_ref=bundle.ref,
        text_ref=bundle.ref,
        image_model_id=f"open_clip:{bundle.ref}|sha256:{fingerprint}|{bundle.dtype}|{transform}",
        dim=bundle.embed_dim,
        text_dim=bundle.embed_dim,
        aligned=True,
        normalized=True,
    )


def lite_extractors(image: ImageEncoder, text: TextEncoder) -> Extractors:
    """EfficientNet-Lite0 pooled pre-logits (as they are, not normalized) and MiniLM sentence features: two spaces
    that are not aligned."""
    return Extractors(
        encode_images=image.encode,
        encode_texts=text.encode,
        image_ref=image.ref,
        text_ref=text.ref,
        image_model_id=image.model_id,
        dim=image.dim,
        text_dim=text.dim,
        aligned=False,
        normalized=False,
    )
