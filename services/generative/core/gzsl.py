"""The final GZSL classifier of DFZSL (methods.md §3 step 4): a logit-adjusted cosine classifier.

logits = cos(x, w_c) / temperature. The class weights w_c start from the L2-normalized text features of all
classes (DFZSL's text and image features share one space). When the text dimension D_t differs from the feature
dimension D they are mapped by a fixed seeded random orthonormal matrix (:func:`text_prototypes`), which keeps the
angles between classes but carries no image-space knowledge; the classifier learns the alignment from its
training features. (A map fitted on the training classes would itself be a zero-shot learner and would blur what
the synthesized features contribute.)

Training uses the logit-adjusted loss of Menon et al. (2021): cross-entropy of logits + tau·log π_y, with π the
class frequencies of the training set (base + synthesized features). A class without training samples counts as
one sample so its adjusted logit stays finite. At inference no prior is added; calibrated stacking subtracts
``calibration_gamma`` (in logit units) from the logits of the seen classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.features import FeatureSet

from .common import ConfigMixin, EpochHook, StopHook, TrainingCancelled, clone_state_dict, make_adam

__all__ = [
    "CosineClassifier",
    "GZSLConfig",
    "GZSLTrainResult",
    "build_gzsl_classifier",
    "fit_gzsl_classifier",
    "text_prototypes",
    "train_gzsl_classifier",
]


@dataclass
class GZSLConfig(ConfigMixin):
    """Defaults of DFZSL's final classifier; ``batch_size`` is our choice (the paper does not state one)."""

    seed: int = 0
    epochs: int = 100
    lr: float = 5e-5
    batch_size: int = 256
    weight_decay: float = 0.0
    temperature: float = 0.01
    logit_adjustment: bool = True
    logit_adjustment_tau: float = 1.0
    calibration_gamma: float = 0.0

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class CosineClassifier(nn.Module):
    """Class weights [C, D]; ``seen_mask`` [C] marks the classes calibrated stacking penalizes."""

    def __init__(self, weight: Tensor, seen_mask: Tensor, temperature: float, calibration_gamma: float = 0.0) -> None:
        super().__init__()
        if weight.ndim != 2 or seen_mask.shape != (weight.shape[0],):
            raise ValueError(
                f"weight must be [C, D] and seen_mask [C], got {tuple(weight.shape)}, {tuple(seen_mask.shape)}"
            )
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.register_buffer("seen_mask", seen_mask.detach().clone().bool())
        self.temperature = temperature
        self.calibration_gamma = calibration_gamma

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """Uncalibrated logits cos(x, w)/temperature, [N, C]."""
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature

    @torch.no_grad()
    def scores(self, x: Tensor, gamma: float | None = None, batch_size: int = 65536) -> Tensor:
        """Inference logits with calibrated stacking: seen-class logits minus ``gamma`` (default: the configured)."""
        g = self.calibration_gamma if gamma is None else gamma
        x = x.to(device=self.weight.device, dtype=torch.float32)
        out = torch.cat([self(chunk) for chunk in x.split(batch_size)])
        return out - g * self.seen_mask.to(out.dtype)

    def predict(self, x: Tensor, gamma: float | None = None) -> Tensor:
        """Predicted class index of every row of ``x``."""
        return self.scores(x, gamma).argmax(dim=1)


@dataclass
class GZSLTrainResult:
    """The trained classifier, a deep copy of its state dict, and the mean training loss of every epoch."""

    classifier: CosineClassifier
    state_dict: dict[str, Tensor]
    history: list[dict[str, float]]


def text_prototypes(text_features: Tensor, dim: int, seed: int = 0) -> Tensor:
    """Initial class weights [C, dim]: the L2-normalized text features, randomly rotated into ``dim`` if needed.

    Text and image features of different widths share no axes, so the map is a fixed seeded random orthonormal
    one: for D_t <= dim it keeps every inner product between text features (an isometric embedding); for D_t > dim
    it is an orthogonal projection onto a random dim-dimensional subspace. Training then aligns the weights.
    """
    text = F.normalize(text_features.float(), dim=-1)
    d_t = text.shape[1]
    if d_t == dim:
        return text
    rng = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(d_t, dim), min(d_t, dim), generator=rng, dtype=torch.float64))
    proj = (q.T if d_t < dim else q).to(device=text.device, dtype=torch.float32)  # [d_t, dim]
    return F.normalize(text @ proj, dim=-1)


def fit_gzsl_classifier(
    features: Tensor,
    labels: Tensor,
    text_features: Tensor,
    seen_classes: Sequence[int] | Tensor,
    config: GZSLConfig,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GZSLTrainResult:
    """Train over all C = len(text_features) classes on (base + synthesized) ``features`` [N, D], ``labels`` [N]."""
    config.check()
    device = torch.device(device) if device is not None else features.device
    x = F.normalize(features.to(device=device, dtype=torch.float32), dim=-1)
    y = labels.to(device=device, dtype=torch.int64)
    num_classes = text_features.shape[0]
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"need features [N, D] and labels [N] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    seen_mask = torch.zeros(num_classes, dtype=torch.bool)
    seen_mask[torch.as_tensor(seen_classes, dtype=torch.int64)] = True

    weight = text_prototypes(text_features.to(device), x.shape[1], config.seed)
    model = CosineClassifier(weight, seen_mask, config.temperature, config.calibration_gamma).to(device)
    optimizer = make_adam(model, config.lr, weight_decay=config.weight_decay)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).float()
    adjustment = config.logit_adjustment_tau * (counts / counts.sum()).log() if config.logit_adjustment else None
    rng = torch.Generator(device=device).manual_seed(config.seed)
    n, b = x.shape[0], config.batch_size
    steps = math.ceil(n / b)
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, device=device, generator=rng)
        total = torch.zeros((), device=device)
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(epoch)
            idx = order[i * b : (i + 1) * b]
            logits = model(x[idx])
            if adjustment is not None:
                logits = logits + adjustment
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        record = {"loss": (total / steps).item()}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, dict(record))
    return GZSLTrainResult(classifier=model, state_dict=clone_state_dict(model), history=history)


def train_gzsl_classifier(
    data: FeatureSet,
    seen_classes: Sequence[int] | Tensor,
    config: GZSLConfig,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GZSLTrainResult:
    """:func:`fit_gzsl_classifier` on a FeatureSet holding base + synthesized features and all classes' text."""
    data.validate()
    return fit_gzsl_classifier(
        data.features,
        data.labels,
        data.text_features,
        seen_classes,
        config,
        on_epoch=on_epoch,
        should_stop=should_stop,
        device=device,
    )


def build_gzsl_classifier(state_dict: dict[str, Tensor], config: GZSLConfig) -> CosineClassifier:
    """Rebuild a trained classifier from its state dict (e.g. read from safetensors) and its config."""
    missing = {"weight", "seen_mask"} - set(state_dict)
    if missing:
        raise ValueError(f"classifier state dict lacks {sorted(missing)}")
    model = CosineClassifier(
        state_dict["weight"], state_dict["seen_mask"], config.temperature, config.calibration_gamma
    )
    model.load_state_dict(state_dict)
    return model
