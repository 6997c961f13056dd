"""A DFZSL teacher fitted where none exists: multinomial logistic regression on real base-class features.

The teacher of DFZSL is a classifier someone already has; ``fit_teacher`` makes one from a labelled feature set:
scikit-learn's L-BFGS logistic regression (deterministic) on the L2-normalized features of the named classes, as the
weight [S, D] and bias [S] that ``Recover`` scores with its LINEAR metric.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zsc.errors import InvalidArgument


@dataclass(frozen=True)
class TeacherFit:
    """The fitted teacher: ``weight`` [S, D], ``bias`` [S] (float32), and how it was fitted."""

    weight: torch.Tensor
    bias: torch.Tensor
    class_names: tuple[str, ...]
    n_train: int
    train_accuracy: float
    c: float
    max_iter: int

    def metadata(self) -> dict[str, str]:
        """The safetensors header: one key, since safetensors writes several in no fixed order and the file should
        not change between reruns."""
        about = {
            "class_names": list(self.class_names),
            "fit": {"method": "multinomial logistic regression", "C": self.c, "max_iter": self.max_iter},
            "n_train": self.n_train,
            "train_accuracy": round(self.train_accuracy, 6),
        }
        return {"zsc.teacher": json.dumps(about, sort_keys=True)}

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save({"weight": self.weight, "bias": self.bias}, metadata=self.metadata())


def fit_teacher(
    features: torch.Tensor,
    labels: torch.Tensor,
    file_classes: Sequence[str],
    names: Sequence[str],
    *,
    c: float = 1.0,
    max_iter: int = 1000,
) -> TeacherFit:
    """Fit on the samples of ``names`` (teacher-row order) among ``features`` [N, D] labelled into ``file_classes``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if len(names) < 2:
        raise InvalidArgument("a teacher needs at least 2 base classes")
    if not (c > 0 and np.isfinite(c)):
        raise InvalidArgument(f"c must be finite and > 0, got {c}")
    if max_iter < 1:
        raise InvalidArgument(f"max_iter must be >= 1, got {max_iter}")
    index = {n: i for i, n in enumerate(file_classes)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InvalidArgument(f"class {missing[0]!r} is not in the features file")
    keep = torch.zeros(len(labels), dtype=torch.bool)
    targets = torch.full((len(labels),), -1, dtype=torch.int64)
    for row, name in enumerate(names):
        mask = labels == index[name]
        if not bool(mask.any()):
            raise InvalidArgument(f"the features file has no sample of class {name!r}")
        keep |= mask
        targets[mask] = row
    # Unit-norm inputs: recovery draws its virtual features on the unit sphere, so the teacher must score those.
    x = torch.nn.functional.normalize(features[keep].double(), dim=1).numpy()
    y = targets[keep].numpy()
    model = LogisticRegression(C=c, max_iter=max_iter).fit(x, y)
    accuracy = float(np.mean(model.predict(x) == y))
    weight, bias = torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float()
    if len(names) == 2:  # sklearn keeps one row (the logit of class 1); the same softmax with one row per class:
        weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]) / 2
    return TeacherFit(weight.contiguous(), bias.contiguous(), tuple(names), len(y), accuracy, c, max_iter)
