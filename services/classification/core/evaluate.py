"""Evaluate any batch classifier on an ImageFolder: accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from zsc.data import ImageFolder, load_image_file
from zsc.errors import Cancelled
from zsc.evaluation import confusion_matrix, per_class_accuracy


@dataclass
class FolderEvaluation:
    class_names: list[str]
    labels: torch.Tensor
    predictions: torch.Tensor
    confusion: torch.Tensor
    per_class: list[float]
    top1: float
    macro: float
    seconds: float

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, len(self.labels))


def evaluate_folder(
    dataset: ImageFolder,
    classify: Callable[[list[Image.Image]], torch.Tensor],
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FolderEvaluation:
    """Classify every image (``classify`` maps a list of images to predicted class indices)."""
    start = time.perf_counter()
    predictions: list[torch.Tensor] = []
    total = len(dataset)
    for i in range(0, total, batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("evaluation cancelled")
        chunk = dataset.samples[i : i + batch_size]
        predictions.append(classify([load_image_file(path) for path, _ in chunk]).cpu())
        if on_progress is not None:
            on_progress(min(i + batch_size, total), total)
    labels = torch.tensor([label for _, label in dataset.samples])
    preds = torch.cat(predictions)
    n = len(dataset.classes)
    per_class = per_class_accuracy(labels, preds, n)
    present = per_class[~per_class.isnan()]
    return FolderEvaluation(
        class_names=list(dataset.classes),
        labels=labels,
        predictions=preds,
        confusion=confusion_matrix(labels, preds, n),
        per_class=[float(a) for a in per_class.nan_to_num(0.0)],
        top1=float((preds == labels).float().mean()),
        macro=float(present.mean()) if present.numel() else 0.0,
        seconds=time.perf_counter() - start,
    )
