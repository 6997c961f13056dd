"""Evaluate any batch classifier on an ImageFolder: accuracy, per-class accuracy and the confusion matrix.

Per-image results can be appended to a JSONL log as they finish; a rerun with the same log skips the images
already in it, so an interrupted evaluation resumes where it stopped. A torn last line (a kill mid-write) is
ignored and that image is simply evaluated again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zsc.data import ImageFolder, load_image_file
from zsc.errors import Cancelled, FailedPrecondition
from zsc.evaluation import confusion_matrix, per_class_accuracy

# A classifier maps (images, their global sample indices) to one prediction record per image; each record has at
# least "pred" (the predicted class index) and may carry method-specific fields (errors, UNet passes, ...).
Classifier = Callable[[list[Image.Image], list[int]], list[dict[str, Any]]]


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
    records: list[dict[str, Any]]
    resumed: int = 0  # images taken from the results log instead of recomputed

    @property
    def seconds_per_image(self) -> float:
        """Wall time per image computed in this run (resumed images cost nothing)."""
        return self.seconds / max(1, len(self.labels) - self.resumed)


def read_results(path: Path) -> dict[int, dict[str, Any]]:
    """Records of a results log by sample index; a torn or foreign line is skipped."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    text = path.read_text()
    if text and not text.endswith("\n"):  # a torn last line: cut it off, or the next append would extend it
        text = text[: text.rfind("\n") + 1]
        with path.open("r+") as f:
            f.truncate(len(text.encode()))
    for line in text.splitlines():
        try:
            record = json.loads(line)
            done[int(record["index"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def evaluate_folder(
    dataset: ImageFolder,
    classify: Classifier,
    batch_size: int = 64,
    *,
    shard: tuple[int, int] | None = None,
    results_path: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FolderEvaluation:
    """Classify the samples (all, or the ``shard`` range of them) and score the predictions."""
    start = time.perf_counter()
    lo, hi = shard or (0, len(dataset))
    items = [(i, *dataset.samples[i]) for i in range(lo, hi)]
    done = read_results(results_path) if results_path is not None else {}
    for i, path, label in items:
        if i in done and (done[i].get("path") != _rel(dataset, path) or done[i].get("label") != label):
            raise FailedPrecondition(f"results log {results_path} belongs to another dataset (sample {i} differs)")
    resumed = sum(i in done for i, _, _ in items)
    pending = [item for item in items if item[0] not in done]
    total = len(items)
    if on_progress is not None:
        on_progress(resumed, total)
    for b in range(0, len(pending), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("evaluation cancelled")
        chunk = pending[b : b + batch_size]
        outputs = classify([load_image_file(path) for _, path, _ in chunk], [i for i, _, _ in chunk])
        records = [
            {"index": i, "path": _rel(dataset, path), "label": label, **out}
            for (i, path, label), out in zip(chunk, outputs, strict=True)
        ]
        done.update((r["index"], r) for r in records)
        if results_path is not None:
            _append(results_path, records)
        if on_progress is not None:
            on_progress(resumed + b + len(chunk), total)
    records = [done[i] for i, _, _ in items]
    return score(dataset.classes, records, time.perf_counter() - start, resumed)


def evaluate_classifier(
    dataset: ImageFolder,
    predict_proba: Callable[[list[Image.Image]], torch.Tensor],
    batch_size: int = 64,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FolderEvaluation:
    """``evaluate_folder`` for a classifier that gives class probabilities: each record is its top class and its
    probability."""

    def classify(images: list[Image.Image], _indices: list[int]) -> list[dict[str, Any]]:
        best = predict_proba(images).max(dim=-1)
        return [{"pred": int(i), "prob": float(p)} for p, i in zip(best.values, best.indices, strict=True)]

    return evaluate_folder(dataset, classify, batch_size, on_progress=on_progress, should_stop=should_stop)


def score(
    class_names: Sequence[str], records: list[dict[str, Any]], seconds: float = 0.0, resumed: int = 0
) -> FolderEvaluation:
    """Metrics of per-image records ({"label", "pred", ...}); also merges the shards of several replicas."""
    n = len(class_names)
    labels = torch.tensor([int(r["label"]) for r in records], dtype=torch.int64)
    preds = torch.tensor([int(r["pred"]) for r in records], dtype=torch.int64)
    per_class = per_class_accuracy(labels, preds, n)
    present = per_class[~per_class.isnan()]
    return FolderEvaluation(
        class_names=list(class_names),
        labels=labels,
        predictions=preds,
        confusion=confusion_matrix(labels, preds, n),
        per_class=[float(a) for a in per_class.nan_to_num(0.0)],
        top1=float((preds == labels).float().mean()) if len(records) else 0.0,
        macro=float(present.mean()) if present.numel() else 0.0,
        seconds=seconds,
        records=records,
        resumed=resumed,
    )


def _rel(dataset: ImageFolder, path: Path) -> str:
    return str(path.relative_to(dataset.root))
