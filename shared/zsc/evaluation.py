"""Evaluation metrics shared by every service: per-class accuracy, GZSL S/U/H, base-to-new B/N/HM, seeds.

Accuracies are fractions in [0, 1]. A *per-class mean* averages the accuracy of each class that has at least one
sample among the classes asked for, so a class absent from the evaluation set neither counts as 0 nor as 1.
GZSL's S and U are per-class means; base-to-new B and N are overall accuracies (correct / samples), as the DFZSL
and SHIP code compute them, with their per-class means beside them under their own names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "BaseNewMetrics",
    "GZSLMetrics",
    "MeanStd",
    "base_to_new_metrics",
    "confusion_accuracy",
    "confusion_matrix",
    "gzsl_metrics",
    "harmonic_mean",
    "mean_per_class_accuracy",
    "mean_std",
    "mean_std_dict",
    "per_class_accuracy",
    "present_mean",
]

IndexLike = Sequence[int] | torch.Tensor


def _as_labels(x: IndexLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim != 1 or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be a 1-D integer tensor, got {t.dtype} with shape {tuple(t.shape)}")
    return t.to(torch.int64)


def _max(*tensors: torch.Tensor) -> int:
    """Largest entry over the tensors, -1 when all are empty."""
    return max((int(t.max()) for t in tensors if t.numel()), default=-1)


def confusion_matrix(y_true: IndexLike, y_pred: IndexLike, num_classes: int) -> torch.Tensor:
    """[C, C] int64 counts; row = true class, column = predicted class."""
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.numel()} entries but y_pred has {p.numel()}")
    for name, v in (("y_true", t), ("y_pred", p)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(y_true: IndexLike, y_pred: IndexLike, num_classes: int) -> torch.Tensor:
    """[C] float64 accuracy of each class; NaN for a class with no samples."""
    return confusion_accuracy(confusion_matrix(y_true, y_pred, num_classes))


def confusion_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """[C] float64 accuracy of each class of a [C, C] confusion matrix (row = true class); NaN for a class with no
    samples. Merged evaluations (several shards' matrices added up) are scored with it."""
    cm = torch.as_tensor(confusion).to(torch.float64)
    support = cm.sum(dim=1)
    return torch.where(support > 0, cm.diagonal() / support.clamp_min(1), torch.full_like(support, math.nan))


def present_mean(accuracy: torch.Tensor) -> float:
    """The per-class mean: the mean over the classes with samples (finite entries); 0.0 when none has any."""
    acc = torch.as_tensor(accuracy)
    acc = acc[~acc.isnan()]
    return float(acc.mean()) if acc.numel() else 0.0


def mean_per_class_accuracy(
    y_true: IndexLike, y_pred: IndexLike, classes: IndexLike | None = None, num_classes: int | None = None
) -> float:
    """Mean over ``classes`` (default: all) that have samples of their per-class accuracy; 0.0 when none do.

    Only samples whose true class is in ``classes`` count, but their predictions may be any class.
    """
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    c = _as_labels(classes, "classes") if classes is not None else None
    n = num_classes if num_classes is not None else _max(t, p, *(() if c is None else (c,))) + 1
    acc = per_class_accuracy(t, p, n)
    if c is not None:
        acc = acc[c]
    return present_mean(acc)


def harmonic_mean(a: float, b: float) -> float:
    """2ab/(a+b), and 0 when both are 0."""
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


@dataclass(frozen=True)
class _Record:
    """A frozen result whose ``as_dict`` is its fields (a dataclass base, so ``asdict`` applies to every subclass)."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class GZSLMetrics(_Record):
    """GZSL metrics: seen (S), unseen (U) per-class mean accuracy, both predicted over all classes; H."""

    seen: float
    unseen: float
    harmonic: float


@dataclass(frozen=True)
class BaseNewMetrics(_Record):
    """Base-to-new metrics, each sample predicted within its own class set: base (B) and new (N) overall accuracy
    and HM = H(B, N); ``base_per_class``/``new_per_class`` are the per-class means of the same predictions."""

    base: float
    new: float
    harmonic: float
    base_per_class: float = math.nan
    new_per_class: float = math.nan


def _check_disjoint(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if torch.isin(a, b).any():
        raise ValueError(f"{what} class sets overlap")


def gzsl_metrics(
    y_true: IndexLike, y_pred: IndexLike, seen_classes: IndexLike, unseen_classes: IndexLike
) -> GZSLMetrics:
    """S, U and H from predictions made over all classes (seen and unseen alike)."""
    seen, unseen = _as_labels(seen_classes, "seen_classes"), _as_labels(unseen_classes, "unseen_classes")
    _check_disjoint(seen, unseen, "seen and unseen")
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    n = _max(t, p, seen, unseen) + 1
    s = mean_per_class_accuracy(t, p, seen, n)
    u = mean_per_class_accuracy(t, p, unseen, n)
    return GZSLMetrics(seen=s, unseen=u, harmonic=harmonic_mean(s, u))


def base_to_new_metrics(
    scores: torch.Tensor, y_true: IndexLike, base_classes: IndexLike, new_classes: IndexLike
) -> BaseNewMetrics:
    """B, N (overall accuracy) and HM from scores [N, C] over all classes: base samples compete among base classes
    only, new among new. The per-class means come along as ``base_per_class`` and ``new_per_class``."""
    base, new = _as_labels(base_classes, "base_classes"), _as_labels(new_classes, "new_classes")
    _check_disjoint(base, new, "base and new")
    t = _as_labels(y_true, "y_true")
    scores = scores.detach().cpu()
    if scores.ndim != 2 or scores.shape[0] != t.numel():
        raise ValueError(f"scores must be [{t.numel()}, C], got {tuple(scores.shape)}")

    def within(classes: torch.Tensor) -> tuple[float, float]:
        """(overall accuracy, per-class mean) of the samples of ``classes`` predicted among them; 0 with none."""
        rows = torch.isin(t, classes)
        if not rows.any():
            return 0.0, 0.0
        pred = classes[scores[rows][:, classes].argmax(dim=1)]
        overall = float((pred == t[rows]).double().mean())
        return overall, mean_per_class_accuracy(t[rows], pred, classes, scores.shape[1])

    (b, b_pc), (n, n_pc) = within(base), within(new)
    return BaseNewMetrics(base=b, new=n, harmonic=harmonic_mean(b, n), base_per_class=b_pc, new_per_class=n_pc)


def gzsl_report(gzsl: Any, base_new: Any) -> dict[str, float]:
    """S/U/H and B/N/HM (overall accuracy, as the released code computes them) plus the per-class B/N under their
    own names, from GZSLMetrics and BaseNewMetrics or their proto messages (same field names)."""
    return {
        "S": gzsl.seen,
        "U": gzsl.unseen,
        "H": gzsl.harmonic,
        "B": base_new.base,
        "N": base_new.new,
        "HM": base_new.harmonic,
        "B_per_class": base_new.base_per_class,
        "N_per_class": base_new.new_per_class,
    }


@dataclass(frozen=True)
class MeanStd(_Record):
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over ``n`` runs."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean ± sample std of a metric over seeds."""
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(v.std(correction=1)) if v.numel() > 1 else 0.0
    return MeanStd(mean=float(v.mean()), std=std, n=v.numel())


def mean_std_dict(runs: Sequence[Mapping[str, float]]) -> dict[str, MeanStd]:
    """Per-key :func:`mean_std` over a list of metric dicts (one per seed) that share the same keys."""
    if not runs:
        raise ValueError("mean_std_dict needs at least one run")
    keys = list(runs[0])
    if any(set(r) != set(keys) for r in runs):
        raise ValueError("all runs must report the same metric keys")
    return {k: mean_std(r[k] for r in runs) for k in keys}
