"""Importers for the standard benchmark formats, writing zsc feature sets and ImageFolders.

* **GZSL proposed splits** (Xian et al.; AWA2, CUB, SUN, FLO, APY): ``att_splits.mat`` or DFZSL's ``clip_splits.mat``
  (1-based ``*_loc`` indices into the images, ``allclasses_names``, ``att``; DFZSL adds ``cls_features`` [512, C],
  the CLIP text features of the class names) and, optionally, the image features ``res101.mat`` / ``ViTB16.mat``
  (``features`` [D, N], 1-based ``labels``, ``image_files``). :func:`read_gzsl` checks them and :func:`write_gzsl`
  writes one feature set per split, the class lists and the split indices.
* **CoOp's base-to-new datasets**: ``split_zhou_<Dataset>.json`` (train/val/test lists of [path, label, classname])
  over an image root. :func:`read_coop_split` checks it and :func:`write_coop` writes an ImageFolder per split and half
  (base = the first half of the sorted labels, CoOp's ``subsample_classes``).
* **The Diffusion Classifier's datasets**: class names as its prompts spell them (:func:`pets_class_names`,
  :func:`imagenet_class_names`, :func:`objectnet_classes`); the CLI reads the images through torchvision.

Every fault of an input file is an :class:`ImportFault` (a ValueError) of one line. Nothing here knows about gRPC or
MLflow. Outputs are staged in a temporary folder beside the target and renamed into place at the end, so an
interrupted import leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsc.data import IMAGE_SUFFIXES
from zsc.io import atomic_write_bytes

__all__ = [
    "GZSL_SPLITS",
    "CoopSplit",
    "GzslData",
    "ImportFault",
    "folder_name",
    "imagenet_class_names",
    "link_images",
    "load_mat",
    "normalize_class_name",
    "objectnet_classes",
    "pets_class_names",
    "read_coop_split",
    "read_gzsl",
    "staged_dir",
    "write_class_map",
    "write_coop",
    "write_gzsl",
]

#: The splits of the proposed-split files, in the order they are written.
GZSL_SPLITS = ("trainval", "train", "val", "test_seen", "test_unseen")
# Pairs that must share no image (the zero-shot premise and Xian et al.'s validation protocol) ...
_DISJOINT = (("trainval", "test_seen"), ("trainval", "test_unseen"), ("test_seen", "test_unseen"), ("train", "val"))
# ... and splits that lie inside another.
_INSIDE = (("train", "trainval"), ("val", "trainval"))
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
COOP_SPLITS = ("train", "val", "test")
COOP_HALVES = ("base", "new")


class ImportFault(ValueError):
    """An input file that is missing, malformed or inconsistent: one line naming the file and the fault."""


# --- shared helpers -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` when the block succeeds (and vanishes when it fails).

    ``out`` must not exist or be an empty folder, so an import never mixes with an older one."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportFault(f"{out} already exists and is not empty; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the folder it becomes should not be
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_name(class_name: str) -> str:
    """The folder of a class in an ImageFolder: the name itself, with '/' (which no folder name may hold) as '_'.

    A folder that differs from its class is listed in ``class_map.txt`` (FOLDER=NAME lines, for ``--class-map
    @class_map.txt``), because zsc reads folder names as class names."""
    name = class_name.replace("/", "_")
    if not name.strip() or name in (".", ".."):
        raise ImportFault(f"class name {class_name!r} cannot be a folder name")
    return name


def _write_text(path: Path, lines: Sequence[str]) -> None:
    atomic_write_bytes(path, ("".join(f"{line}\n" for line in lines)).encode("utf-8"))


def _write_json(path: Path, payload: object, indent: int | None = 1) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=indent, sort_keys=True) + "\n").encode("utf-8"))


def write_class_map(out: Path, folders: Sequence[str], names: Sequence[str]) -> bool:
    """Write ``out/class_map.txt`` (FOLDER=NAME lines) for the folders not named as their class; False if none."""
    pairs = [f"{f}={n}" for f, n in zip(folders, names, strict=True) if f != n]
    if pairs:
        _write_text(out / "class_map.txt", pairs)
    return bool(pairs)


def normalize_class_name(raw: str) -> str:
    """How a benchmark file's class name reads in a prompt: a leading ``NNN.`` (CUB's ``001.Black_footed_Albatross``)
    is dropped and '+' and '_' become spaces (AWA2's ``grizzly+bear``, SUN's ``art_gallery``), which is what DFZSL's
    loaders do for AWA2, CUB and SUN; runs of spaces collapse."""
    name = re.sub(r"^\d+\.", "", raw.strip())
    return " ".join(name.replace("+", " ").replace("_", " ").split())


# --- MATLAB files ---------------------------------------------------------------------------------------------------


def load_mat(path: Path) -> dict[str, Any]:
    """The variables of a .mat file: v5 through scipy, v7.3 (HDF5) through h5py; ImportFault (one line) otherwise."""
    if not path.is_file():
        raise ImportFault(f"no such file: {path}")
    with open(path, "rb") as fh:
        head = fh.read(520)
    if head[512:520] == _HDF5_SIGNATURE or head.startswith(_HDF5_SIGNATURE):
        return _load_mat_hdf5(path)
    import scipy.io

    try:
        return {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    except NotImplementedError:  # scipy's answer to v7.3 files without the HDF5 signature where we look
        return _load_mat_hdf5(path)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError... on a corrupt file
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImportFault(f"{path.name} is not a readable MATLAB file ({detail})") from None


def _load_mat_hdf5(path: Path) -> dict[str, Any]:
    try:
        import h5py
    except ImportError:
        raise ImportFault(
            f"{path.name} is a MATLAB v7.3 (HDF5) file: install h5py (pip install h5py) to read it, or re-save it "
            "from MATLAB with save(..., '-v7')"
        ) from None
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as fh:
        for key, node in fh.items():
            if key.startswith("#") or not isinstance(node, h5py.Dataset):
                continue
            out[key] = _hdf5_value(fh, node)
    return out


def _hdf5_value(fh: Any, node: Any) -> Any:
    """A v7.3 variable as scipy would give it: MATLAB writes column-major, so arrays come back transposed; a cell
    array holds references to its elements; char arrays are uint16 code points."""
    import h5py

    data = node[()]
    if node.dtype == h5py.ref_dtype:
        cells = np.empty(data.shape, dtype=object)
        for idx in np.ndindex(data.shape):
            cells[idx] = _hdf5_value(fh, fh[data[idx]])
        return cells.T
    if node.attrs.get("MATLAB_class", b"") in (b"char", "char"):
        return np.array(["".join(map(chr, np.asarray(data).T.reshape(-1)))])
    return np.asarray(data).T


def _strings(value: Any, path: Path, key: str) -> list[str]:
    """A MATLAB cell array or char matrix of strings as a flat list (scipy nests each cell in 1-element arrays)."""

    def one(item: Any) -> str:
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.reshape(-1)[0]
        if isinstance(item, np.ndarray) and item.dtype.kind == "U" and item.size == 1:
            item = item.reshape(-1)[0]
        if not isinstance(item, str):
            raise ImportFault(f"{path.name}: {key} is not a list of strings (found {type(item).__name__})")
        return str(item).strip()

    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.reshape(-1)]
    if arr.dtype != object:
        raise ImportFault(f"{path.name}: {key} is not a list of strings (dtype {arr.dtype})")
    return [one(item) for item in arr.reshape(-1)]


def _one_based(value: Any, path: Path, key: str, n: int | None) -> np.ndarray:
    """MATLAB's 1-based indices (or labels) as 0-based int64, refusing 0-based, fractional or out-of-range ones."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or (arr.ndim == 2 and min(arr.shape) != 1) or arr.ndim > 2:
        raise ImportFault(f"{path.name}: {key} must be a vector of integers, got {arr.dtype} {list(arr.shape)}")
    flat = arr.reshape(-1)
    if flat.size == 0:
        raise ImportFault(f"{path.name}: {key} is empty")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(flat) & (flat == np.round(flat))):
        raise ImportFault(f"{path.name}: {key} holds non-integer values")
    idx = flat.astype(np.int64)
    if int(idx.min()) < 1:
        raise ImportFault(
            f"{path.name}: {key} holds {int(idx.min())}, but the format's indices are 1-based (MATLAB): was the file "
            "written 0-based?"
        )
    if n is not None and int(idx.max()) > n:
        raise ImportFault(f"{path.name}: {key} holds {int(idx.max())}, beyond the {n} it indexes")
    return idx - 1


# --- GZSL proposed splits -------------------------------------------------------------------------------------------


@dataclass
class GzslData:
    """A proposed-split benchmark: classes in the file's order, 0-based image indices per split, the text features
    of every class and, when the image-features file was given, the features and labels of every image."""

    class_names: list[str]
    original_names: list[str]
    unseen: list[int]  # class indices
    splits: dict[str, np.ndarray]  # split -> 0-based image indices, in the file's order
    text_features: np.ndarray  # [C, D_t] float32
    text_source: str  # which variable the text features came from
    num_images: int | None = None
    features: np.ndarray | None = None  # [N, D] float32
    labels: np.ndarray | None = None  # [N] int64, 0-based class indices
    image_files: list[str] | None = None
    prompts: list[str] = field(default_factory=list)  # clip_splits' cls_text: the prompts of cls_features
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def seen(self) -> list[int]:
        unseen = set(self.unseen)
        return [c for c in range(len(self.class_names)) if c not in unseen]


TEXT_SOURCES = ("cls_features", "att", "original_att")


def read_gzsl(
    splits_path: Path,
    image_features: Path | None = None,
    *,
    unseen: Sequence[str] = (),
    text: str = "",
    keep_names: bool = False,
) -> GzslData:
    """Read and check a proposed-split file (``att_splits.mat`` / ``clip_splits.mat``) and optionally its image
    features (``res101.mat`` / ``ViTB16.mat``).

    The unseen classes are the classes of ``test_unseen`` when the image labels are known; otherwise the file does
    not say which they are, and ``unseen`` (names, original or normalized) or a ``testclasses.txt`` beside the file
    (Xian et al.'s list) must. ``text`` picks the class embedding: ``cls_features`` (DFZSL's CLIP text features; the
    default when present), ``att`` (the default otherwise) or ``original_att``."""
    mat = load_mat(splits_path)
    name = splits_path.name
    missing = [k for k in ("allclasses_names", *(f"{s}_loc" for s in GZSL_SPLITS)) if k not in mat]
    if missing:
        raise ImportFault(f"{name} lacks {', '.join(missing)}: not a proposed-split file (att_splits.mat layout)")
    original = _strings(mat["allclasses_names"], splits_path, "allclasses_names")
    names = list(original) if keep_names else [normalize_class_name(n) for n in original]
    for i, n in enumerate(names):
        if not n:
            raise ImportFault(f"{name}: class {i + 1} has an empty name")
        if names.index(n) != i:
            raise ImportFault(f"{name}: classes {original[names.index(n)]!r} and {original[i]!r} both read {n!r}")
    n_classes = len(names)

    features = labels = files = None
    num_images: int | None = None
    sources = {"splits": str(splits_path.resolve())}
    if image_features is not None:
        features, labels, files = _read_image_features(image_features, n_classes)
        num_images = len(labels)
        sources["image_features"] = str(image_features.resolve())
    splits = {s: _one_based(mat[f"{s}_loc"], splits_path, f"{s}_loc", num_images) for s in GZSL_SPLITS}
    _check_splits(splits, name)

    text_features, source = _text_features(mat, splits_path, text, n_classes)
    has_prompts = source == "cls_features" and "cls_text" in mat
    prompts = _strings(mat["cls_text"], splits_path, "cls_text") if has_prompts else []
    if prompts and len(prompts) != n_classes:
        prompts = []  # cls_text of another length is not the prompts of these rows

    given = _class_indices(unseen, names, original, name) if unseen else None
    if labels is not None:
        unseen_idx = _unseen_from_labels(labels, splits, names, name, image_features)  # type: ignore[arg-type]
        if given is not None and sorted(given) != unseen_idx:
            raise ImportFault(
                f"--unseen names {len(given)} classes, but the images of test_unseen belong to "
                f"{len(unseen_idx)} others: {[names[c] for c in unseen_idx][:5]}"
            )
    elif given is not None:
        unseen_idx = sorted(given)
    else:
        listed = splits_path.parent / "testclasses.txt"
        if not listed.is_file():
            raise ImportFault(
                f"{name} does not say which classes are unseen without the image labels: give the image features "
                "(res101.mat / ViTB16.mat), --unseen NAMES or @testclasses.txt, or put Xian et al.'s testclasses.txt "
                "beside it"
            )
        entries = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        unseen_idx = sorted(_class_indices(entries, names, original, listed.name))
        sources["unseen"] = str(listed.resolve())
    if not unseen_idx or len(unseen_idx) == n_classes:
        raise ImportFault(f"{name}: {len(unseen_idx)} of {n_classes} classes are unseen; a GZSL split needs both kinds")
    return GzslData(
        class_names=names,
        original_names=original,
        unseen=unseen_idx,
        splits=splits,
        text_features=text_features,
        text_source=source,
        num_images=num_images,
        features=features,
        labels=labels,
        image_files=files,
        prompts=prompts,
        sources=sources,
    )


def _read_image_features(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    mat = load_mat(path)
    missing = [k for k in ("features", "labels") if k not in mat]
    if missing:
        raise ImportFault(f"{path.name} lacks {', '.join(missing)}: not an image-features file (res101.mat layout)")
    raw = np.asarray(mat["features"])
    if raw.ndim != 2 or raw.dtype.kind not in "iuf":
        raise ImportFault(f"{path.name}: features must be a numeric matrix [D, N], got {raw.dtype} {list(raw.shape)}")
    labels = _one_based(mat["labels"], path, "labels", n_classes)
    n = len(labels)
    if raw.shape[1] != n:
        hint = " (it looks [N, D]; the format is [D, N])" if raw.shape[0] == n else ""
        raise ImportFault(f"{path.name}: features is {list(raw.shape)} for {n} labels{hint}")
    features = np.ascontiguousarray(raw.T, dtype=np.float32)
    if not np.isfinite(features).all():
        raise ImportFault(f"{path.name}: features contain NaN or Inf")
    files = _strings(mat["image_files"], path, "image_files") if "image_files" in mat else None
    if files is not None and len(files) != n:
        raise ImportFault(f"{path.name}: {len(files)} image_files for {n} labels")
    return features, labels, files


def _check_splits(splits: Mapping[str, np.ndarray], name: str) -> None:
    sets = {}
    for split, idx in splits.items():
        unique = np.unique(idx)
        if unique.size != idx.size:
            raise ImportFault(f"{name}: {split}_loc lists {idx.size - unique.size} images twice")
        sets[split] = unique
    for a, b in _DISJOINT:
        both = np.intersect1d(sets[a], sets[b])
        if both.size:
            raise ImportFault(f"{name}: {a}_loc and {b}_loc share {both.size} images (e.g. image {int(both[0]) + 1})")
    for inner, outer in _INSIDE:
        outside = np.setdiff1d(sets[inner], sets[outer])
        if outside.size:
            raise ImportFault(f"{name}: {outside.size} images of {inner}_loc are not in {outer}_loc")


def _text_features(mat: Mapping[str, Any], path: Path, text: str, n_classes: int) -> tuple[np.ndarray, str]:
    if text and text not in TEXT_SOURCES:
        raise ImportFault(f"unknown class embedding {text!r}; choose one of {', '.join(TEXT_SOURCES)}")
    source = text or ("cls_features" if "cls_features" in mat else "att")
    if source not in mat:
        raise ImportFault(f"{path.name} has no {source}")
    arr = np.asarray(mat[source])
    if arr.ndim != 2 or arr.dtype.kind not in "iuf" or arr.shape[1] != n_classes:
        raise ImportFault(f"{path.name}: {source} must be [dim, {n_classes}] (a column a class), got {list(arr.shape)}")
    out = np.ascontiguousarray(arr.T, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ImportFault(f"{path.name}: {source} contains NaN or Inf")
    return out, source


def _class_indices(given: Sequence[str], names: list[str], original: list[str], where: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)} | {n: i for i, n in enumerate(original)}
    unknown = [g for g in given if g not in index]
    if unknown:
        raise ImportFault(f"{where} names classes the file does not have: {unknown[:5]}")
    out = [index[g] for g in given]
    if len(set(out)) != len(out):
        raise ImportFault(f"{where} names a class twice")
    return out


def _unseen_from_labels(
    labels: np.ndarray, splits: Mapping[str, np.ndarray], names: list[str], name: str, features: Path
) -> list[int]:
    """The classes of test_unseen, after checking that no class is both seen and unseen and every class is one."""
    seen = set(np.unique(labels[splits["trainval"]]).tolist())
    unseen = set(np.unique(labels[splits["test_unseen"]]).tolist())
    both = sorted(seen & unseen)
    if both:
        raise ImportFault(f"{name}: class {names[both[0]]!r} has images in both trainval_loc and test_unseen_loc")
    stray = sorted(set(np.unique(labels[splits["test_seen"]]).tolist()) - seen)
    if stray:
        raise ImportFault(f"{name}: class {names[stray[0]]!r} of test_seen_loc has no trainval images")
    neither = sorted(set(range(len(names))) - seen - unseen)
    if neither:
        raise ImportFault(
            f"{features.name}: class {names[neither[0]]!r} has no image in trainval_loc or test_unseen_loc "
            "(do the two files belong together?)"
        )
    return sorted(unseen)


def write_gzsl(data: GzslData, out: Path) -> list[str]:
    """Write ``data`` into the new folder ``out``; returns the names of the files written.

    Always: ``classes.txt`` (all classes, the file's order: labels index it), ``seen.txt``, ``unseen.txt``,
    ``splits.json`` (0-based image indices per split, the original names, the sources) and two text-only feature sets
    (no image rows): ``text.safetensors`` (all classes) and ``text-seen.safetensors`` (the seen classes in
    ``seen.txt`` order, for ``zsc recover --text-features ... --classes @seen.txt``). With image features, also one
    feature set per split (``trainval.safetensors`` ...) listing all classes with their text features,
    ``test.safetensors`` (test_seen then test_unseen) and ``image_files.txt`` (the image of each index)."""
    import torch

    from zsc.features import FeatureSet

    names, seen, unseen = data.class_names, data.seen, data.unseen
    text = torch.from_numpy(data.text_features)
    metadata = {
        "zsc.import": json.dumps(
            {
                "format": "gzsl-proposed-splits",
                "sources": data.sources,
                "text_source": data.text_source,
                "original_names": data.original_names,
                "seen": [names[c] for c in seen],
                "unseen": [names[c] for c in unseen],
            },
            sort_keys=True,
        )
    }
    if data.prompts:
        metadata["zsc.import.text_prompts"] = json.dumps(data.prompts)
    written = ["classes.txt", "seen.txt", "unseen.txt", "splits.json", "text.safetensors", "text-seen.safetensors"]
    with staged_dir(out) as tmp:
        _write_text(tmp / "classes.txt", names)
        _write_text(tmp / "seen.txt", [names[c] for c in seen])
        _write_text(tmp / "unseen.txt", [names[c] for c in unseen])
        _write_json(  # compact: AWA2's 60,849 indices one a line would be 600 KB
            tmp / "splits.json",
            {
                "index_base": 0,
                "num_images": data.num_images,
                "classes": names,
                "original_names": data.original_names,
                "seen": [names[c] for c in seen],
                "unseen": [names[c] for c in unseen],
                "text_source": data.text_source,
                "sources": data.sources,
                "splits": {s: data.splits[s].tolist() for s in GZSL_SPLITS},
            },
            indent=None,
        )
        empty = torch.zeros(0, text.shape[1])
        no_labels = torch.zeros(0, dtype=torch.int64)
        FeatureSet(empty, no_labels, list(names), text, dict(metadata)).save(tmp / "text.safetensors")
        FeatureSet(empty, no_labels, [names[c] for c in seen], text[seen], dict(metadata)).save(
            tmp / "text-seen.safetensors"
        )
        if data.features is not None and data.labels is not None:
            if data.image_files is not None:
                _write_text(tmp / "image_files.txt", data.image_files)
                written.append("image_files.txt")
            # test = test_seen + test_unseen: the one labelled test file `zsc evaluate-gzsl --test` scores S and U on
            test_rows = np.concatenate([data.splits["test_seen"], data.splits["test_unseen"]])
            for split, rows in [*((s, data.splits[s]) for s in GZSL_SPLITS), ("test", test_rows)]:
                FeatureSet(
                    torch.from_numpy(data.features[rows]),
                    torch.from_numpy(data.labels[rows]),
                    list(names),
                    text,
                    {**metadata, "zsc.import.split": split},
                ).save(tmp / f"{split}.safetensors")
                written.append(f"{split}.safetensors")
    return written


# --- CoOp's split_zhou files ----------------------------------------------------------------------------------------


@dataclass
class CoopSplit:
    """A CoOp split file: (relative image path, label) per split, the class name of each label (0..C-1) and the
    base/new halves (CoOp: the sorted labels of train, the first ceil(C/2) base)."""

    items: dict[str, list[tuple[str, int]]]
    class_names: list[str]  # prompt form: CoOp's '_' read as spaces
    original_names: list[str]
    base: list[int]
    new: list[int]


def read_coop_split(path: Path) -> CoopSplit:
    """Read and check ``split_zhou_<Dataset>.json``: ImportFault (one line) for a malformed entry, labels that are not
    0..C-1 (a 1-based file says so), a label with two class names, or an image listed twice or in two splits."""
    if not path.is_file():
        raise ImportFault(f"no such file: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ImportFault(f"{path.name} is not JSON ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or any(not isinstance(raw.get(s), list) for s in COOP_SPLITS):
        raise ImportFault(f"{path.name} must be an object with train, val and test lists (CoOp's split_zhou format)")
    items: dict[str, list[tuple[str, int]]] = {}
    label_name: dict[int, str] = {}
    where: dict[str, str] = {}
    for split in COOP_SPLITS:
        rows = []
        for i, entry in enumerate(raw[split]):
            if (
                not isinstance(entry, list)
                or len(entry) != 3
                or not isinstance(entry[0], str)
                or not entry[0]
                or isinstance(entry[1], bool)
                or not isinstance(entry[1], int)
                or not isinstance(entry[2], str)
                or not entry[2].strip()
            ):
                raise ImportFault(f"{path.name}: {split}[{i}] is not [image path, integer label, class name]")
            impath, label, cname = entry
            if Path(impath).is_absolute() or ".." in Path(impath).parts:
                raise ImportFault(f"{path.name}: {split}[{i}] path {impath!r} leaves the image root")
            if label_name.setdefault(label, cname) != cname:
                raise ImportFault(f"{path.name}: label {label} is both {label_name[label]!r} and {cname!r}")
            if impath in where:
                both = f"twice in {split}" if where[impath] == split else f"in both {where[impath]} and {split}"
                raise ImportFault(f"{path.name}: image {impath!r} is listed {both}")
            where[impath] = split
            rows.append((impath, label))
        items[split] = rows
    labels = sorted(label_name)
    if not labels:
        raise ImportFault(f"{path.name} lists no images")
    if labels != list(range(len(labels))):
        base = " (it runs 1..C: CoOp's split files are 0-based)" if labels == list(range(1, len(labels) + 1)) else ""
        raise ImportFault(f"{path.name}: labels must be 0..{len(labels) - 1}, got {labels[0]}..{labels[-1]}{base}")
    original = [label_name[y] for y in labels]
    names = [" ".join(n.replace("_", " ").split()) for n in original]
    if len(set(names)) != len(names):
        raise ImportFault(f"{path.name}: two classes have the same name once '_' reads as a space")
    train_labels = sorted({y for _, y in items["train"]})
    absent = sorted(set(labels) - set(train_labels))
    if absent:  # CoOp splits by the labels of train; a class without train images would vanish from both halves
        raise ImportFault(f"{path.name}: class {original[absent[0]]!r} has no train images")
    m = math.ceil(len(train_labels) / 2)
    return CoopSplit(items, names, original, train_labels[:m], train_labels[m:])


LINKS = ("symlink", "hardlink", "copy")


def write_coop(split: CoopSplit, images: Path, out: Path, link: str = "symlink") -> dict[str, dict[str, int]]:
    """Write ``out/<split>/<base|new>/<class>/<image>`` for every split and half; returns the image counts.

    ``link`` says how an image gets there: ``symlink`` (default: the datasets are large, and zsc reads an ImageFolder
    through symlinks), ``hardlink`` (same file system, no dangling links when the source moves) or ``copy``
    (self-contained, e.g. for DVC). Every image must exist under ``images`` with an image suffix zsc reads. Beside
    the folders: ``classes.txt``, ``base.txt``, ``new.txt``, ``class_map.txt`` (only where a class name cannot be a
    folder name), ``class_map_base.txt`` and ``class_map_new.txt`` (each half's entries, always written, maybe empty,
    for ``--class-map @`` on ``<split>/<half>``) and ``import.json``."""
    if link not in LINKS:
        raise ImportFault(f"unknown link mode {link!r}; choose one of {', '.join(LINKS)}")
    images = images.resolve()
    if not images.is_dir():
        raise ImportFault(f"image root {images} is not a directory")
    for rows in split.items.values():
        for impath, _ in rows:
            src = images / impath
            if Path(impath).suffix.lower() not in IMAGE_SUFFIXES:
                raise ImportFault(f"{impath!r} is not an image zsc reads ({', '.join(sorted(IMAGE_SUFFIXES))})")
            if not src.is_file():
                raise ImportFault(f"image {impath!r} is not under {images} (is --images CoOp's image_dir?)")
    folders = [folder_name(n) for n in split.class_names]
    half_of = {y: "base" for y in split.base} | {y: "new" for y in split.new}
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(COOP_HALVES, 0) for s in COOP_SPLITS}
    with staged_dir(out) as tmp:
        for s in COOP_SPLITS:
            for half in COOP_HALVES:
                entries = [(images, impath, label) for impath, label in split.items[s] if half_of[label] == half]
                counts[s][half] = len(entries)
                link_images(entries, folders, tmp / s / half, link)
        _write_text(tmp / "classes.txt", split.class_names)
        _write_text(tmp / "base.txt", [split.class_names[y] for y in split.base])
        _write_text(tmp / "new.txt", [split.class_names[y] for y in split.new])
        write_class_map(tmp, folders, split.class_names)
        for half, labels in (("base", split.base), ("new", split.new)):
            # A half's folder holds only its own classes, and --class-map refuses entries naming absent folders, so
            # each half gets its own map, written even when empty: a recipe can always pass it.
            pairs = [f"{folders[y]}={split.class_names[y]}" for y in labels if folders[y] != split.class_names[y]]
            _write_text(tmp / f"class_map_{half}.txt", pairs)
        _write_json(
            tmp / "import.json",
            {
                "format": "coop-split-zhou",
                "images": str(images),
                "link": link,
                "classes": split.class_names,
                "original_names": split.original_names,
                "base": [split.class_names[y] for y in split.base],
                "new": [split.class_names[y] for y in split.new],
                "counts": counts,
            },
        )
    return counts


def link_images(rows: Sequence[tuple[Path, str, int]], folders: Sequence[str], out: Path, link: str) -> None:
    """Place each (root, relative path, label) image at ``out/<folders[label]>/<file name>``; two images of one
    class with the same file name keep their relative path, flattened ('/' as '__'), so none is lost."""
    out.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    for root, impath, label in rows:
        folder = out / folders[label]
        dest = folder / Path(impath).name
        if dest in taken:
            dest = folder / impath.replace("/", "__")
        taken.add(dest)
        folder.mkdir(parents=True, exist_ok=True)
        _place(root / impath, dest, link)


def _place(src: Path, dest: Path, link: str) -> None:
    if link == "symlink":
        os.symlink(src, dest)  # absolute (src is resolved), so the folder can move
    elif link == "hardlink":
        os.link(src, dest)
    else:
        shutil.copy2(src, dest)


# --- the Diffusion Classifier's class names -------------------------------------------------------------------------


def pets_class_names(breeds: Sequence[str], species_of: Mapping[int, int]) -> list[str]:
    """Oxford-IIIT Pet breeds as the Diffusion Classifier's prompts name them: the breed and its species ("Abyssinian
    cat", "Beagle dog"); ``species_of`` maps a breed's label to torchvision's binary category (0 cat, 1 dog)."""
    missing = [b for i, b in enumerate(breeds) if i not in species_of]
    if missing:
        raise ImportFault(f"no image tells the species of {missing[0]!r}")
    return [f"{breed} {('cat', 'dog')[species_of[i]]}" for i, breed in enumerate(breeds)]


# Two names repeat in CLIP's ImageNet list (657/744 missile, 836/837 sunglasses); zsc needs distinct names, so 744
# (n04008634 projectile, missile) and 836 (n04355933 sunglass) take their WordNet lemmas.
_IMAGENET_RENAMES = {744: "projectile", 836: "sunglass"}
_WNID = re.compile(r"^n\d{8}$")


def imagenet_class_names(folders: Sequence[str]) -> list[str]:
    """CLIP's ImageNet class names (open_clip's ``IMAGENET_CLASSNAMES``, the Diffusion Classifier's 'openai' names) of
    the 1,000 WordNet-id folders of an ILSVRC-2012 split, whose sorted order is the class index."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = sorted(folders)
    bad = [f for f in wnids if not _WNID.match(f)]
    if bad or len(wnids) != len(IMAGENET_CLASSNAMES):
        what = f"folder {bad[0]!r} is not a WordNet id" if bad else f"it has {len(wnids)} class folders"
        raise ImportFault(f"not an ILSVRC-2012 split ({what}); it needs the 1,000 folders n01440764 ... n15075141")
    return [_IMAGENET_RENAMES.get(i, n) for i, n in enumerate(IMAGENET_CLASSNAMES)]


def objectnet_classes(root: Path) -> dict[str, str]:
    """{image folder: class name} of the 113 ObjectNet classes that overlap ImageNet-1k, as the Diffusion Classifier
    evaluates them: read from ObjectNet's ``mappings/folder_to_objectnet_label.json`` and
    ``mappings/objectnet_to_imagenet_1k.json``, the label lower-cased ("Alarm clock" -> "alarm clock")."""
    maps = root / "mappings"
    try:
        folder_label = json.loads((maps / "folder_to_objectnet_label.json").read_text(encoding="utf-8"))
        overlap = json.loads((maps / "objectnet_to_imagenet_1k.json").read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ImportFault(f"{root} is not an ObjectNet folder: no {Path(err.filename).name} in mappings/") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ImportFault(f"ObjectNet mappings are not JSON ({type(err).__name__})") from None
    if not isinstance(folder_label, dict) or not isinstance(overlap, dict):
        raise ImportFault("ObjectNet mappings must be JSON objects")
    classes = {f: str(label).lower() for f, label in folder_label.items() if label in overlap}
    if len(set(classes.values())) != len(classes):
        raise ImportFault("two ObjectNet folders carry the same label")
    return dict(sorted(classes.items()))
