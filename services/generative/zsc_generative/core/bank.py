"""A feature bank: every training image encoded once per augmentation view, then reused every epoch.

SHIP's released code (like CoOp's and Tip-Adapter's) runs each training image through CLIP's image encoder again
in every epoch, under a fresh random augmentation. The encoder is frozen, so the only thing that changes between
epochs is the augmentation. zsc encodes each image once for each of ``V`` views, stores the features
[V, N, D], and in every epoch draws one view per image: the same training signal as re-encoding with a random
augmentation drawn from V fixed ones, at the cost of a gather (``bench/ship.py`` measures the difference).

View 0 is the plain eval transform (no augmentation): validation and anything that needs one feature per image
read it. The other views are random resized crops (scale 0.5-1) with horizontal flips, the train transform of the
SHIP and Tip-Adapter code.

In a zsc feature set a bank is stored row-major by image: row ``i * V + v`` is view ``v`` of image ``i``, and the
metadata key ``zsc.views`` holds V (absent means 1). Labels repeat per view.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zsc.features import FeatureSet

__all__ = ["VIEWS_KEY", "FeatureBank", "augment_view", "encode_bank"]

VIEWS_KEY = "zsc.views"
MAX_VIEWS = 1024


@dataclass
class FeatureBank:
    """``features`` [V, N, D] (view v of image i) and ``labels`` [N] of N images."""

    features: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.features.ndim != 3 or self.features.shape[0] < 1:
            raise ValueError(f"bank features must be [V >= 1, N, D], got {tuple(self.features.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.features.shape[1]:
            raise ValueError(f"bank labels must be [N={self.features.shape[1]}], got {tuple(self.labels.shape)}")

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    @property
    def images(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def to(self, device: torch.device | str) -> FeatureBank:
        return FeatureBank(self.features.to(device), self.labels.to(device))

    def take(self, index: Tensor) -> FeatureBank:
        """The images at ``index``, all their views."""
        index = index.to(self.features.device)
        return FeatureBank(self.features[:, index], self.labels[index])

    def plain(self) -> Tensor:
        """View 0 of every image, [N, D]."""
        return self.features[0]

    def mean_views(self) -> Tensor:
        """The mean over views of every image, [N, D] (Tip-Adapter's cache keys before normalization)."""
        return self.features.mean(dim=0)

    def draw(self, index: Tensor, generator: torch.Generator) -> Tensor:
        """Images ``index`` [B], each in a view drawn uniformly (the per-epoch random augmentation), [B, D]."""
        view = torch.randint(0, self.views, (index.numel(),), device=self.features.device, generator=generator)
        return self.features[view, index]

    @classmethod
    def from_feature_set(cls, data: FeatureSet) -> FeatureBank:
        """Unflatten a feature set (``zsc.views`` V, rows image-major); ValueError names what does not fit."""
        raw = data.metadata.get(VIEWS_KEY, "1")
        try:
            views = int(raw)
        except ValueError:
            raise ValueError(f"metadata {VIEWS_KEY}={raw!r} is not an integer") from None
        if not 1 <= views <= MAX_VIEWS:
            raise ValueError(f"metadata {VIEWS_KEY}={views} must lie in [1, {MAX_VIEWS}]")
        n = len(data)
        if n % views:
            raise ValueError(f"{n} rows do not split into {views} views per image")
        x = data.features.reshape(n // views, views, data.dim).transpose(0, 1)
        y = data.labels.reshape(n // views, views)
        if not bool((y == y[:, :1]).all()):
            raise ValueError(f"the {views} view rows of an image must share one label")
        return cls(x.contiguous(), y[:, 0].contiguous())

    def to_feature_set(
        self, class_names: list[str], text_features: Tensor, metadata: dict[str, str] | None = None
    ) -> FeatureSet:
        """Flatten to a feature set (see the module docstring)."""
        x = self.features.transpose(0, 1).reshape(-1, self.dim)
        y = self.labels.repeat_interleave(self.views)
        meta = {**(metadata or {}), VIEWS_KEY: str(self.views)}
        return FeatureSet(x.float().cpu().contiguous(), y.cpu(), class_names, text_features.float().cpu(), meta)


def augment_view(images: Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.5, 1.0)) -> Tensor:
    """Random resized crop (area ``scale``, aspect 3/4-4/3) and horizontal flip of every image [B, C, H, W].

    The train transform of the SHIP and Tip-Adapter code, on already-preprocessed tensors, drawing from
    ``generator`` (torchvision's transforms draw from the global RNG).
    """
    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator) * (h * w)
    ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    corner = torch.rand(b, 2, generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i in range(b):
        cw = max(1, min(w, round(math.sqrt(float(area[i] * ratio[i])))))
        ch = max(1, min(h, round(math.sqrt(float(area[i] / ratio[i])))))
        top, left = int(corner[i, 0] * (h - ch + 1)), int(corner[i, 1] * (w - cw + 1))
        crop = images[i : i + 1, :, top : top + ch, left : left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bicubic", align_corners=False)[0]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def encode_bank(
    encode: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor | Sequence[int],
    views: int,
    seed: int = 0,
    batch_size: int = 256,
) -> FeatureBank:
    """Encode every image [N, C, H, W] once per view (view 0 plain, the rest :func:`augment_view`): a bank.

    ``encode`` maps a batch of preprocessed images to features [B, D] (e.g. a frozen CLIP image tower).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    rng = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for v in range(views):
            parts = []
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size]
                parts.append(encode(batch if v == 0 else augment_view(batch, rng)).float())
            out.append(torch.cat(parts))
    return FeatureBank(torch.stack(out), torch.as_tensor(labels, dtype=torch.int64))
