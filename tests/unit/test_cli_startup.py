"""`zsc --help` and argument errors answer without importing torch (it costs seconds at start-up): checked on the
modules a fresh interpreter holds, not on a clock (bench/cli_startup.py times it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "mlflow", "diffusers", "transformers", "open_clip", "timm", "sklearn", "scipy")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_importing_the_cli_imports_no_framework() -> None:
    assert _modules_after("import zsc.cli.main") == set()


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["zeroshot", "--help"], ["train-gzsl", "--help"], ["zeroshot", "--method", "nope", "--data", "x"]],
    ids=["help", "zeroshot-help", "train-gzsl-help", "bad-choice"],
)
def test_help_and_argument_errors_import_no_framework(argv: list[str]) -> None:
    code = (
        "import sys, contextlib, io\nfrom zsc.cli.main import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit as e:\n        assert e.code in (0, 2), e.code"
    )
    assert _modules_after(code) == set()


def test_codec_round_trips_numpy_without_torch() -> None:
    code = (
        "import numpy as np\nfrom zsc import codec\n"
        "x = np.arange(6, dtype=np.float32).reshape(2, 3)\n"
        "assert (codec.decode(codec.encode(x)) == x).all()"
    )
    assert _modules_after(code) == set()
