"""`zsc zeroshot` prints the servers' s/image as it is, however fast the model (a tiny CLIP's figure is a fraction of a
millisecond, which three decimals printed as 0.000 beside seconds of wall time)."""

from __future__ import annotations

import numpy as np
import pytest

from zsc.cli.zeroshot import print_evaluation


@pytest.mark.parametrize("seconds, shown", [(0.000312, "0.000312 s/image"), (1.734, "1.73 s/image"), (12.5, "12.5")])
def test_seconds_per_image_keeps_three_significant_digits(
    capsys: pytest.CaptureFixture[str], seconds: float, shown: str
) -> None:
    metrics = {"top1": 0.5, "macro_accuracy": 0.5, "n_images": 100, "seconds_per_image": seconds, "wall_seconds": 11.2}
    print_evaluation(["a", "b"], [0.5, 0.5], np.array([[25, 25], [25, 25]]), metrics, ["run"])
    first = capsys.readouterr().out.splitlines()[0]
    assert shown in first and "11.2 s wall" in first
