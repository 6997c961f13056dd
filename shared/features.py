"""Feature sets: image features, labels, class names and the text features of all classes, as safetensors.

One file holds three tensors (``features`` [N, D] float32, ``labels`` [N] int64, ``text_features`` [C, D_t]
float32) and, in the safetensors header metadata, the JSON-encoded class names and free-form string metadata.
Nothing is pickled; loading a file never executes code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from zsc.io import atomic_write_bytes

__all__ = ["FORMAT", "FeatureSet", "content_hash"]

#: Value of the ``zsc.format`` header key; bump the suffix on an incompatible change.
FORMAT = "zsc.featureset/1"
_KEY_HEADER = "zsc.featureset"
_KEY_FORMAT = "format"
_KEY_CLASS_NAMES = "class_names"
_KEY_METADATA = "metadata"
_TENSORS = ("features", "labels", "text_features")


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
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names contains duplicates")
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


def content_hash(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
