"""What the classification service's jobs log to MLflow beyond their params and tags: one module the three
servicers share (they import it, never each other)."""

from __future__ import annotations

from collections.abc import Sequence

from zsc import tracking
from zsc.plots import confusion_figure, per_class_figure
from zsc_classification.core.evaluate import FolderEvaluation


def log_evaluation(
    run: tracking.Run, result: FolderEvaluation, class_names: Sequence[str], extra: dict[str, float] | None = None
) -> None:
    """Metrics, the confusion matrix as plot and table, and per-class accuracy as plot and metrics."""
    names = list(class_names)
    run.log_metrics(
        {
            **(extra or {}),
            "top1": result.top1,
            "macro_accuracy": result.macro,
            "seconds_per_image": result.seconds_per_image,
            **dict(zip(tracking.metric_keys("accuracy", names), result.per_class, strict=True)),
        }
    )
    confusion = result.confusion.numpy()
    run.log_figure(confusion_figure(confusion, names), "confusion_matrix.png")
    run.log_figure(per_class_figure(result.per_class, names), "per_class_accuracy.png")
    run.log_table({"true": names, **{n: confusion[:, j].tolist() for j, n in enumerate(names)}}, "confusion.json")
    run.log_table({"class": names, "accuracy": result.per_class}, "per_class_accuracy.json")
