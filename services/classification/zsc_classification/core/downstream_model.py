"""The stored format of zsc's downstream classifiers, and the code that scores with it.

A model is two files: ``weights`` (a safetensors state dict) and ``config`` (JSON: timm architecture, build kwargs,
class names, resolution, normalization). This module imports only torch, timm, torchvision, safetensors and numpy,
and nothing of zsc: MLflow stores it beside ``mlflow_model.py`` (the pyfunc wrapper) in every registered model, so
``mlflow.pyfunc.load_model`` works where zsc is not installed. Training (``core/downstream.py``), the service and
the pyfunc wrapper all preprocess and score through it, so what a registered model predicts through pyfunc is
exactly what the service predicts and what validation scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "zsc-downstream/1"


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """The timm architecture of ``config`` with random weights (the caller loads the state dict)."""
    import timm

    return timm.create_model(
        config["arch"], pretrained=False, num_classes=config["num_classes"], **config.get("model_kwargs", {})
    )


def to_uint8(image: Any) -> torch.Tensor:
    """A PIL image (converted to RGB) or an [H, W, 3] uint8 array as a [3, H, W] uint8 tensor."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image or a [H, W, 3] uint8 array, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)


def eval_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (antialiased) and center-crop a square: [3, H, W] -> [3, size, size]."""
    from torchvision.transforms.v2 import functional as F

    if tuple(image.shape[-2:]) != (size, size):
        image = F.center_crop(F.resize(image, [size], antialias=True), [size, size])
    return image


def normalize(batch: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32, scaled to [0, 1] and standardized per channel (on the batch's device)."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - m) / s


def preprocess(images: list[Any], config: dict[str, Any]) -> torch.Tensor:
    """Images -> the uint8 [N, 3, S, S] batch the model scores (normalization happens on the model's device)."""
    return torch.stack([eval_resize(to_uint8(im), config["image_size"]) for im in images])


class DownstreamModel:
    """A stored downstream classifier: ``load(artifacts)`` reads its two files, ``predict_proba`` scores images."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.config: dict[str, Any] = {}
        self.device = torch.device("cpu")

    def load(self, artifacts: dict[str, str]) -> None:
        """Build the model from ``artifacts["config"]`` and load ``artifacts["weights"]`` into it."""
        from safetensors.torch import load_file

        config = json.loads(Path(artifacts["config"]).read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"unsupported model format {config.get('format')!r}; expected {FORMAT}")
        model = build_model(config)
        model.load_state_dict(load_file(artifacts["weights"]))
        self.model, self.config = model.eval(), config

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    def to(self, device: torch.device | str) -> DownstreamModel:
        assert self.model is not None, "load first"
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] (as from ``preprocess``) -> float32 [N, C] logits on the CPU."""
        assert self.model is not None, "load first"
        x = normalize(batch.to(self.device, non_blocking=True), self.config["mean"], self.config["std"])
        return self.model(x).float().cpu()

    def predict_proba(self, images: list[Any]) -> torch.Tensor:
        """Images (PIL or [H, W, 3] uint8) -> [N, C] class probabilities."""
        return self.logits(preprocess(images, self.config)).softmax(dim=-1)
