"""EvaluateGZSL's scoring: S/U/H and B/N/HM of a classifier on labelled test features, with the per-class
accuracies and the confusion matrix beside them (zsc.evaluation's one rule: a class without samples is left out
of every per-class mean and has NaN accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from zsc.evaluation import (
    BaseNewMetrics,
    GZSLMetrics,
    base_to_new_metrics,
    confusion_matrix,
    gzsl_metrics,
    gzsl_report,
    per_class_accuracy,
)

__all__ = ["GZSLEvaluation", "Scorer", "evaluate_gzsl"]


class Scorer(Protocol):
    """A GZSL cosine classifier or a fine-tuned model: logits [N, C] with calibrated stacking ``gamma``."""

    def scores(self, x: Tensor, gamma: float) -> Tensor: ...


@dataclass(frozen=True)
class GZSLEvaluation:
    gzsl: GZSLMetrics
    base_new: BaseNewMetrics
    per_class: list[float]  # accuracy of each class, NaN for one without samples
    support: list[int]  # test samples of each class
    confusion: Tensor  # [C, C] counts, row = true class

    @property
    def report(self) -> dict[str, float]:
        """S/U/H and B/N/HM under the names the MLflow run and the CLI use."""
        return gzsl_report(self.gzsl, self.base_new)


@torch.no_grad()
def evaluate_gzsl(
    classifier: Scorer,
    features: Tensor,
    labels: Tensor,
    seen: Sequence[int],
    unseen: Sequence[int],
    num_classes: int,
    gamma: float,
    device: torch.device,
) -> GZSLEvaluation:
    """Score ``features`` [N, D] (true ``labels`` [N]) over all classes: GZSL's S/U/H predict over every class,
    B/N/HM within the sample's own class set (seen = base, unseen = new)."""
    scores = classifier.scores(features.to(device), gamma).cpu()
    pred = scores.argmax(dim=1)
    return GZSLEvaluation(
        gzsl=gzsl_metrics(labels, pred, seen, unseen),
        base_new=base_to_new_metrics(scores, labels, seen, unseen),
        per_class=per_class_accuracy(labels, pred, num_classes).tolist(),
        support=torch.bincount(labels, minlength=num_classes).tolist(),
        confusion=confusion_matrix(labels, pred, num_classes),
    )
