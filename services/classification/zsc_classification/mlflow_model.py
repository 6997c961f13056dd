"""MLflow models-from-code file for zsc's downstream classifiers.

MLflow copies this file into the model and executes it at load time; nothing is pickled. The model itself is two
artifacts: ``weights`` (a safetensors state dict) and ``config`` (JSON: timm architecture, build kwargs, class
names, resolution, normalization). The file imports only torch, timm, torchvision, safetensors, numpy, pandas and
PIL, so ``mlflow.pyfunc.load_model`` works without zsc installed.

zsc's own service uses the same code (``preprocess`` and ``DownstreamClassifier.predict_proba``), so what a
registered model predicts through pyfunc is exactly what the service predicts and what validation scored.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
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


def signature() -> Any:
    """The serving contract: a column ``image`` of encoded images in; label, index and probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label"),
                ColSpec(DataType.long, "index"),
                ColSpec(DataType.double, "probability"),
                ColSpec(Array(DataType.double), "probabilities"),
            ]
        ),
    )


def input_example() -> pd.DataFrame:
    """One tiny PNG in the ``image`` column: stored with the model to document the serving input."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (127, 127, 127)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


class DownstreamClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``predict`` takes encoded images (bytes, a DataFrame column ``image`` of bytes) or a uint8
    array [N, H, W, 3] and returns one row per image: label, index, probability and all class probabilities."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.config: dict[str, Any] = {}
        self.device = torch.device("cpu")

    def load_context(self, context: Any) -> None:
        from safetensors.torch import load_file

        config = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"unsupported model format {config.get('format')!r}; expected {FORMAT}")
        model = build_model(config)
        model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model, self.config = model.eval(), config

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    def to(self, device: torch.device | str) -> DownstreamClassifier:
        assert self.model is not None, "load_context first"
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] (as from ``preprocess``) -> float32 [N, C] logits on the CPU."""
        assert self.model is not None, "load_context first"
        x = normalize(batch.to(self.device, non_blocking=True), self.config["mean"], self.config["std"])
        return self.model(x).float().cpu()

    def predict_proba(self, images: list[Any]) -> torch.Tensor:
        """Images (PIL or [H, W, 3] uint8) -> [N, C] class probabilities."""
        return self.logits(preprocess(images, self.config)).softmax(dim=-1)

    # DataFrame is the hint MLflow neither derives a schema from nor warns about. Through pyfunc the signature asks
    # for a DataFrame with an ``image`` column; called directly, lists of bytes and uint8 arrays work too.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from PIL import Image

        if isinstance(model_input, pd.DataFrame):
            model_input = list(model_input["image"] if "image" in model_input else model_input.iloc[:, 0])
        if isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim == 4:
            images = list(model_input)
        else:
            items = [model_input] if isinstance(model_input, bytes | bytearray) else list(model_input)
            images = [Image.open(io.BytesIO(bytes(b))).convert("RGB") for b in items]
        probs = self.predict_proba(images)
        best = probs.argmax(dim=-1)
        names = self.class_names
        return pd.DataFrame(
            {
                "label": [names[i] for i in best.tolist()],
                "index": best.tolist(),
                "probability": probs.max(dim=-1).values.tolist(),
                "probabilities": probs.tolist(),
            }
        )


mlflow.models.set_model(DownstreamClassifier())
