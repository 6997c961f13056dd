"""Figures that zsc logs to MLflow (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str = "confusion matrix") -> plt.Figure:
    """Row-normalized confusion matrix (rows = true class) with counts in the cells when there is room."""
    counts = np.asarray(confusion)
    rows = counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    return fig


def per_class_figure(accuracy: list[float], class_names: list[str], title: str = "per-class accuracy") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(class_names) + 2), 3.5))
    ax.bar(range(len(class_names)), accuracy, color="tab:blue")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    return fig
