"""Feature sets: image features, labels, class names and the text features of all classes, as safetensors.

One file holds three tensors (``features`` [N, D] float32, ``labels`` [N] int64, ``text_features`` [C, D_t]
float32) and, in the safetensors header metadata, the JSON-encoded class names and free-form string metadata.
Nothing is pickled; loading a file never executes code.

**Alignments.** DFZSL's FLPT moves every image feature by one shared residual, x' = x + weight * r, and the generator
and the GZSL classifier learn in that moved space; test features must be moved the same way (the released code adds
the residual to every image feature it saves). A feature set written by FLPT (or moved by :meth:`Alignment.apply`)
records the move in its metadata: ``zsc.alignment.id`` (a content hash of r and the weight; a feature set that
carries it is *aligned*) and ``zsc.alignment`` (JSON: the weight and r as base64 little-endian float32, a few KB).
The aligned text features of the classes are the file's own ``text_features``, so the file Align writes is itself
the alignment a consumer applies (:meth:`Alignment.from_features`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save

from zsc.data import duplicate_class, resolve_uri
from zsc.errors import InvalidArgument, first_line
from zsc.io import atomic_write_bytes
from zsc.lineage import file_digests

__all__ = [
    "ALIGNMENT_ID_KEY",
    "ALIGNMENT_KEY",
    "FORMAT",
    "Alignment",
    "Cancellable",
    "FeatureSet",
    "alignment_id",
    "content_hash",
    "read_alignment",
    "read_feature_file",
    "save_features",
]

#: Value of the ``zsc.format`` header key; bump the suffix on an incompatible change.
FORMAT = "zsc.featureset/1"
_KEY_HEADER = "zsc.featureset"
_KEY_FORMAT = "format"
_KEY_CLASS_NAMES = "class_names"
_KEY_METADATA = "metadata"
_TENSORS = ("features", "labels", "text_features")
#: Metadata keys of an aligned feature set (see the module docstring).
ALIGNMENT_ID_KEY = "zsc.alignment.id"
ALIGNMENT_KEY = "zsc.alignment"


@dataclass
class FeatureSet:
    """N labelled feature vectors plus the names and text features of all C classes.

    ``labels`` index into ``class_names`` and the rows of ``text_features``. A class may have no samples (novel
    classes usually have none); its name and text feature are still listed.
    """

    features: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    text_features: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text_features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def validate(self) -> None:
        """Raise ValueError (one line) unless dtypes, shapes, label range and finiteness are consistent."""
        f, y, t = self.features, self.labels, self.text_features
        for name, tensor in zip(_TENSORS, (f, y, t), strict=True):
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if f.dtype != torch.float32 or f.ndim != 2:
            raise ValueError(f"features must be a 2-D float32 tensor, got {f.dtype} with shape {tuple(f.shape)}")
        if y.dtype != torch.int64 or y.ndim != 1:
            raise ValueError(f"labels must be a 1-D int64 tensor, got {y.dtype} with shape {tuple(y.shape)}")
        if t.dtype != torch.float32 or t.ndim != 2:
            raise ValueError(f"text_features must be a 2-D float32 tensor, got {t.dtype} with shape {tuple(t.shape)}")
        if y.shape[0] != f.shape[0]:
            raise ValueError(f"features has {f.shape[0]} rows but labels has {y.shape[0]}")
        if not isinstance(self.class_names, list) or not all(isinstance(n, str) and n for n in self.class_names):
            raise ValueError("class_names must be a list of non-empty strings")
        seen: set[str] = set()
        for name in self.class_names:
            if name in seen:
                raise ValueError(duplicate_class(name, "class_names"))
            seen.add(name)
        if t.shape[0] != len(self.class_names):
            raise ValueError(f"text_features has {t.shape[0]} rows but there are {len(self.class_names)} class names")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got [{int(y.min())}, {int(y.max())}]")
        if not bool(torch.isfinite(f).all()):
            raise ValueError("features contain NaN or Inf")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("text_features contain NaN or Inf")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise ValueError("metadata must map str to str")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Validate, then write atomically: a temp file in the same directory, fsync, os.replace."""
        self.validate()
        path = Path(path)
        tensors = {
            "features": self.features.detach().cpu().contiguous(),
            "labels": self.labels.detach().cpu().contiguous(),
            "text_features": self.text_features.detach().cpu().contiguous(),
        }
        # One header key: safetensors writes its metadata map in arbitrary key order, and a single key keeps the
        # file byte-identical across saves of the same data (so content hashes and DVC see no false changes).
        header = {
            _KEY_HEADER: json.dumps(
                {_KEY_FORMAT: FORMAT, _KEY_CLASS_NAMES: self.class_names, _KEY_METADATA: self.metadata},
                sort_keys=True,
            )
        }
        atomic_write_bytes(path, save(tensors, metadata=header))

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FeatureSet:
        """Read a file written by :meth:`save` and validate it."""
        with safe_open(os.fspath(path), framework="pt", device=str(device)) as fh:
            try:
                header = json.loads((fh.metadata() or {}).get(_KEY_HEADER, "{}"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: bad feature-set header ({exc})") from None
            if header.get(_KEY_FORMAT) != FORMAT:
                raise ValueError(f"{path}: not a zsc feature set (format {header.get(_KEY_FORMAT)!r}, want {FORMAT!r})")
            missing = [k for k in _TENSORS if k not in fh.keys()]  # noqa: SIM118 (safe_open is not a Mapping)
            if missing:
                raise ValueError(f"{path}: missing tensors {missing}")
            tensors = {k: fh.get_tensor(k) for k in _TENSORS}
        if _KEY_CLASS_NAMES not in header:
            raise ValueError(f"{path}: bad feature-set header (no class names)")
        class_names, metadata = header[_KEY_CLASS_NAMES], header.get(_KEY_METADATA, {})
        fs = cls(
            features=tensors["features"],
            labels=tensors["labels"],
            class_names=class_names,
            text_features=tensors["text_features"],
            metadata=metadata,
        )
        fs.validate()
        return fs

    def subset(self, class_indices: Sequence[int] | torch.Tensor, relabel: bool = True) -> FeatureSet:
        """Samples of the given classes.

        With ``relabel`` (default) the result lists only those classes, in the given order, and labels are
        re-indexed to 0..k-1. Without it all classes stay listed and labels keep their indices.
        """
        idx = torch.as_tensor(class_indices, dtype=torch.int64).flatten().cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_classes):
            raise ValueError(f"class indices must lie in [0, {self.num_classes})")
        if idx.unique().numel() != idx.numel():
            raise ValueError("class indices contain duplicates")
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[idx] = torch.arange(idx.numel())
        keep = remap.to(self.labels.device)[self.labels] >= 0
        labels = self.labels[keep]
        if not relabel:
            return FeatureSet(
                self.features[keep], labels, list(self.class_names), self.text_features, dict(self.metadata)
            )
        return FeatureSet(
            features=self.features[keep],
            labels=remap.to(labels.device)[labels],
            class_names=[self.class_names[i] for i in idx.tolist()],
            text_features=self.text_features[idx.to(self.text_features.device)],
            metadata=dict(self.metadata),
        )


def alignment_id(metadata: dict[str, str]) -> str:
    """The alignment id a feature set's metadata records ("" for features in the encoder's own space)."""
    return metadata.get(ALIGNMENT_ID_KEY, "")


@dataclass(frozen=True, eq=False)
class Alignment:
    """A shared shift of the image features, x' = x + weight * residual, and the aligned text features of its
    classes (FLPT's output; ``class_names`` and ``text_features`` may be empty for a shift alone)."""

    residual: torch.Tensor  # [D] float32, CPU
    weight: float
    class_names: tuple[str, ...] = ()
    text_features: torch.Tensor | None = None  # [len(class_names), D_t] float32, CPU

    def __post_init__(self) -> None:
        r = self.residual
        if not isinstance(r, torch.Tensor) or r.dtype != torch.float32 or r.ndim != 1 or r.numel() == 0:
            raise ValueError("the alignment residual must be a non-empty 1-D float32 tensor")
        if not bool(torch.isfinite(r).all()):
            raise ValueError("the alignment residual contains NaN or Inf")
        if not (isinstance(self.weight, float) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"the alignment weight must be a finite float >= 0, got {self.weight!r}")
        t = self.text_features
        if (t is None) != (not self.class_names) or (t is not None and t.shape[0] != len(self.class_names)):
            raise ValueError("the alignment needs one aligned text feature per class name, or neither")

    @property
    def dim(self) -> int:
        return int(self.residual.numel())

    def _residual_bytes(self) -> bytes:
        return self.residual.detach().cpu().contiguous().numpy().astype("<f4").tobytes()

    @property
    def id(self) -> str:
        """sha256 of the residual's little-endian float32 bytes and the weight as a little-endian double."""
        return "sha256:" + hashlib.sha256(self._residual_bytes() + struct.pack("<d", self.weight)).hexdigest()

    def metadata(self) -> dict[str, str]:
        """The metadata entries of a feature set in this alignment's space."""
        residual = base64.b64encode(self._residual_bytes()).decode("ascii")
        record = {"dim": self.dim, "weight": self.weight, "residual": residual}
        return {ALIGNMENT_ID_KEY: self.id, ALIGNMENT_KEY: json.dumps(record, sort_keys=True)}

    @classmethod
    def from_features(cls, data: FeatureSet) -> Alignment:
        """The alignment a feature set records, with the set's text features as the aligned ones; ValueError (one
        line) when it records none or its record does not hash to its id."""
        if ALIGNMENT_KEY not in data.metadata:
            raise ValueError("the feature set records no alignment (it was not written by FLPT Align)")
        try:
            record = json.loads(data.metadata[ALIGNMENT_KEY])
            raw = base64.b64decode(record["residual"], validate=True)
            residual = torch.frombuffer(bytearray(raw), dtype=torch.float32).clone()
            weight, dim = float(record["weight"]), int(record["dim"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad alignment record ({type(err).__name__})") from None
        if residual.numel() != dim:
            raise ValueError(f"bad alignment record (residual has {residual.numel()} values, dim says {dim})")
        alignment = cls(residual, weight, tuple(data.class_names), data.text_features.float().cpu())
        if alignment.id != alignment_id(data.metadata):
            raise ValueError("the alignment record does not match its id (the file was edited)")
        return alignment

    def apply(self, data: FeatureSet, text: bool = True) -> FeatureSet:
        """``data`` moved into this alignment's space: features + weight * residual, the alignment's metadata and,
        with ``text``, the aligned text features of data's classes. ValueError (one line) when data is already
        aligned, has another D, or (with ``text``) names a class the alignment has no text feature of."""
        if alignment_id(data.metadata):
            raise ValueError(f"the features are already aligned (alignment {alignment_id(data.metadata)[:19]})")
        if data.dim != self.dim:
            raise ValueError(f"the features have D={data.dim} but the alignment residual has D={self.dim}")
        text_features = data.text_features
        if text:
            index = {n: i for i, n in enumerate(self.class_names)}
            missing = [n for n in data.class_names if n not in index]
            if missing:
                raise ValueError(f"the alignment has no aligned text feature of class {missing[0]!r}")
            assert self.text_features is not None  # class_names is non-empty, so the text features exist
            text_features = self.text_features[[index[n] for n in data.class_names]]
        shift = self.weight * self.residual.to(data.features.device)  # the order FLPT's core computes it in
        metadata = {**data.metadata, **self.metadata()}
        return FeatureSet(data.features + shift, data.labels, list(data.class_names), text_features, metadata)


def read_feature_file(uri: str, roots: list[Path], field: str) -> tuple[Path, FeatureSet]:
    """The feature set at ``uri`` inside ``roots`` (a request's ``field``), validated; InvalidArgument (one line,
    naming the file but no server directory) when it is not a file or does not read as a feature set."""
    path = resolve_uri(uri, roots)
    if not path.is_file():
        raise InvalidArgument(f"{field} {uri!r} is not a file")
    try:
        return path, FeatureSet.load(path)
    except (ValueError, OSError) as err:
        raise InvalidArgument(f"{field} {path.name}: {first_line(err).replace(str(path) + ': ', '')}") from err
    except Exception as err:  # safetensors raises its own error type on a corrupt header
        raise InvalidArgument(f"cannot read {field} {path.name}: {type(err).__name__}") from err


def read_alignment(uri: str, roots: list[Path], field: str = "alignment_uri") -> tuple[Path, Alignment]:
    """The alignment recorded by the feature set at ``uri`` inside ``roots`` (a request's alignment reference);
    InvalidArgument (one line) when the file is missing, unreadable or records none."""
    path, data = read_feature_file(uri, roots, field)
    try:
        return path, Alignment.from_features(data)
    except ValueError as err:
        raise InvalidArgument(f"{field} {path.name}: {first_line(err)}") from err


class Cancellable(Protocol):
    """A job's cooperative cancellation (the runtime's JobContext and TrackedRun both are one)."""

    def should_stop(self) -> bool: ...

    def check_cancelled(self) -> None: ...


def save_features(features: FeatureSet, path: Path, job: Cancellable) -> None:
    """A job's output file, written atomically; a job cancelled around the write leaves no file behind."""
    job.check_cancelled()
    path.parent.mkdir(parents=True, exist_ok=True)
    features.save(path)
    if job.should_stop():
        path.unlink(missing_ok=True)
        job.check_cancelled()


def content_hash(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large files never sit in memory."""
    return file_digests(path, "sha256", chunk_size=chunk_size)[0]
