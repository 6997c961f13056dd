"""Upper bounds of the numeric training settings, where the libraries under zsc stop accepting values.

torch's optimizers turn each rate into a float32 scalar, after scaling it (Adam divides lr by 1 - beta1 ** t, 0.1
at beta1 0.9), and refuse what overflows ("value cannot be converted to type float without overflow"); far below
that, a step already drives float32 weights to inf/NaN. The bounds sit far above every method's published values.
"""

from __future__ import annotations

import math

MAX_LR = 10.0  # published rates: 1e-5 (CLIP fine-tuning) to 0.1 (SGD on logits)
MAX_WEIGHT_DECAY = 10.0  # published: 0 to 0.05


def check_bounded(name: str, value: float, limit: float, *, positive: bool) -> None:
    """ValueError (one line) unless ``value`` is finite, > 0 (or >= 0 unless ``positive``) and at most ``limit``."""
    low_ok = value > 0 if positive else value >= 0
    if not (math.isfinite(value) and low_ok and value <= limit):
        interval = f"(0, {limit:g}]" if positive else f"[0, {limit:g}]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
